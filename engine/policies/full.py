"""Full KV: never evicts (the cache grows to n_ctx). The reference every policy is judged against."""

from .base import Policy


class FullPolicy(Policy):
    name = "full"

"""H2O (Zhang et al. 2023): heavy hitters, the tokens with the largest attention accumulated over
every query so far (summed over heads)."""

from .base import Policy


class H2OPolicy(Policy):
    name = "h2o"
    attention_queries = "all"

    def observe(self, il, obs):
        self.state[il, : len(obs.attn_mass)] += obs.attn_mass

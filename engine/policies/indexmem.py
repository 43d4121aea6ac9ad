"""IndexMem (METHOD.md section 2): a token's importance is the learned indexer's score, max over
the queries seen since the layer's last compression (after prefill: every prompt query of the
chunk). ``gamma`` > 0 carries a decayed share of the previous rounds' importance across a
compression (importance <- max(gamma * importance, new max)); gamma = 0 is the paper's rule.
``pool_kernel`` > 1 max-pools the importance over neighbouring positions before the top-B, as
SnapKV does, so that a span the indexer points into is kept whole."""

import numpy as np

from .base import Policy
from .snapkv import pool_by_position


class IndexMemPolicy(Policy):
    name = "indexmem"
    needs_index = True

    @classmethod
    def validate_params(cls, gamma: float = 0.0, pool_kernel: int = 1, **params):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"indexmem gamma must be in [0, 1], got {gamma}")
        if pool_kernel < 1 or pool_kernel % 2 == 0:
            raise ValueError(f"indexmem pool_kernel must be odd and >= 1, got {pool_kernel}")

    def __init__(self, n_layer, capacity, gamma: float = 0.0, pool_kernel: int = 1, **params):
        super().__init__(n_layer, capacity)
        self.validate_params(gamma, pool_kernel)
        self.gamma = gamma
        self.pool_kernel = pool_kernel
        self.state.fill(-np.inf)  # nothing seen yet

    def observe(self, il, obs):
        if obs.index_scores is None:
            raise RuntimeError(f"layer {il}: the indexmem policy got no indexer scores")
        n = len(obs.index_scores)
        np.maximum(self.state[il, :n], obs.index_scores, out=self.state[il, :n])

    def scores(self, il, positions, budget):
        own = self.state[il, : len(positions)]
        return own if self.pool_kernel == 1 else pool_by_position(own, positions, self.pool_kernel)

    def compressed(self, il):
        row = self.state[il]
        if self.gamma > 0.0:
            # decay towards "unimportant" whatever the sign of a score
            finite = np.isfinite(row)
            row[finite] = np.where(row[finite] > 0, self.gamma * row[finite], row[finite] / self.gamma)
        else:
            row.fill(-np.inf)

    def move(self, il, src, dst, n_keep):
        self.state[il, dst] = self.state[il, src]
        self.state[il, n_keep:] = -np.inf

    def replaced(self, il, slots):
        self.state[il, slots] = -np.inf

    def clear(self):
        self.state.fill(-np.inf)

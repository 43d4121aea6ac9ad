"""IndexMem (METHOD.md section 2): a token's importance is the learned indexer's score, max over
the queries seen since the layer's last compression (after prefill: every prompt query of the
chunk). ``gamma`` > 0 carries a decayed share of the previous rounds' importance across a
compression (importance <- max(gamma * importance, new max)); gamma = 0 is the paper's rule."""

import numpy as np

from .base import Policy


class IndexMemPolicy(Policy):
    name = "indexmem"
    needs_index = True

    @classmethod
    def validate_params(cls, gamma: float = 0.0, **params):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"indexmem gamma must be in [0, 1], got {gamma}")

    def __init__(self, n_layer, capacity, gamma: float = 0.0, **params):
        super().__init__(n_layer, capacity)
        self.validate_params(gamma)
        self.gamma = gamma
        self.state.fill(-np.inf)  # nothing seen yet

    def observe(self, il, obs):
        if obs.index_scores is None:
            raise RuntimeError(f"layer {il}: the indexmem policy got no indexer scores")
        n = len(obs.index_scores)
        np.maximum(self.state[il, :n], obs.index_scores, out=self.state[il, :n])

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

    def clear(self):
        self.state.fill(-np.inf)

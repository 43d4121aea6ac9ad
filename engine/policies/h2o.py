"""H2O (Zhang et al. 2023): heavy hitters, the tokens with the largest attention accumulated over
every query so far (summed over heads), next to a recent window that takes ``recent_ratio`` of
the budget (half, as in the paper)."""

import numpy as np

from .base import Policy


class H2OPolicy(Policy):
    name = "h2o"
    attention_queries = "all"

    @classmethod
    def validate_params(cls, recent_ratio: float = 0.5, **params):
        if not 0.0 <= recent_ratio < 1.0:
            raise ValueError(f"h2o recent_ratio must be in [0, 1), got {recent_ratio}")

    def __init__(self, n_layer, capacity, recent_ratio: float = 0.5, **params):
        super().__init__(n_layer, capacity)
        self.validate_params(recent_ratio)
        self.recent_ratio = recent_ratio

    def observe(self, il, obs):
        self.state[il, : len(obs.attn_mass)] += obs.attn_mass

    def scores(self, il, positions, budget):
        scores = self.state[il, : len(positions)].copy()
        n_recent = int(budget * self.recent_ratio)
        if n_recent:
            scores[positions > positions.max() - n_recent] = np.inf
        return scores

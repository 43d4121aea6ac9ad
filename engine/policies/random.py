"""Random eviction, seeded: a floor every other policy must beat."""

import numpy as np

from .base import Policy


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, n_layer, capacity, seed: int = 0, **params):
        super().__init__(n_layer, capacity)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def scores(self, il, positions):
        return self.rng.random(len(positions))

    def clear(self):
        super().clear()
        self.rng = np.random.default_rng(self.seed)

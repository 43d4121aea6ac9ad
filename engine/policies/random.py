"""Random eviction: a floor every other policy must beat. Each token gets a fixed pseudo-random
priority from (seed, layer, position), so runs are reproducible and independent of slot order."""

import numpy as np

from .base import Policy


def token_priority(seed: int, il: int, positions: np.ndarray) -> np.ndarray:
    """A splitmix64-style hash of (seed, layer, position) mapped to [0, 1)."""
    with np.errstate(over="ignore"):  # the multiplications wrap modulo 2**64 on purpose
        salt = np.array([il + 1, seed], dtype=np.uint64) * np.array(
            [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9], dtype=np.uint64
        )
        x = positions.astype(np.uint64) + salt[0] + salt[1]
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, n_layer, capacity, seed: int = 0, **params):
        super().__init__(n_layer, capacity)
        self.seed = seed

    def scores(self, il, positions, budget):
        return token_priority(self.seed, il, np.maximum(positions, 0))

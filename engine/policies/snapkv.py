"""SnapKV (Li et al. 2024): attention from an observation window of the latest queries (the last
``obs_window`` of each prefill chunk, and every decoding query since the last compression),
smoothed by max-pooling over neighbouring positions so that whole spans are kept."""

import numpy as np

from .base import Policy


class SnapKVPolicy(Policy):
    name = "snapkv"
    attention_queries = "window"

    @classmethod
    def validate_params(cls, obs_window: int = 32, pool_kernel: int = 5, **params):
        if obs_window < 1 or pool_kernel < 1 or pool_kernel % 2 == 0:
            raise ValueError("snapkv needs obs_window >= 1 and an odd pool_kernel >= 1")

    def __init__(self, n_layer, capacity, obs_window: int = 32, pool_kernel: int = 5, **params):
        super().__init__(n_layer, capacity)
        self.validate_params(obs_window, pool_kernel)
        self.obs_window = obs_window
        self.pool_kernel = pool_kernel

    def observe(self, il, obs):
        self.state[il, : len(obs.attn_mass)] += obs.attn_mass

    def scores(self, il, positions, budget):
        return pool_by_position(self.state[il, : len(positions)], positions, self.pool_kernel)

    def compressed(self, il):
        self.state[il] = 0.0  # the next round observes the queries that come after it


def pool_by_position(values: np.ndarray, positions: np.ndarray, kernel: int) -> np.ndarray:
    """Max-pool ``values`` over neighbours in position order (slots are not in that order)."""
    occupied = np.flatnonzero(positions >= 0)
    order = occupied[np.argsort(positions[occupied], kind="stable")]
    out = np.full(len(values), -np.inf)
    out[order] = sliding_max(values[order], kernel)
    return out


def sliding_max(seq: np.ndarray, kernel: int) -> np.ndarray:
    """The max of each centred window of odd width ``kernel`` over ``seq`` (clipped at its ends).
    Spans double in width (max of two halves) until two overlapping ones cover a window, so a
    compression's pooling is a few whole-array maxima instead of one per window."""
    n, half = len(seq), kernel // 2
    padded = np.full(n + 2 * half, -np.inf, dtype=np.result_type(seq.dtype, np.float32))
    padded[half : half + n] = seq
    span, width = padded, 1  # span[i] = max(padded[i : i + width])
    while 2 * width <= kernel:
        span = np.maximum(span[:-width], span[width:])
        width *= 2
    return np.maximum(span[:n], span[kernel - width : kernel - width + n])

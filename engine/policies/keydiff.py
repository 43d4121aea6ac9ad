"""KeyDiff (Park et al. 2025): keep the keys least similar to the mean key direction; attention
free, so it needs only the cached (post-RoPE) keys, which it records as they are written."""

import numpy as np

from .base import Policy


class KeyDiffPolicy(Policy):
    name = "keydiff"
    needs_keys = True

    def __init__(self, n_layer, capacity, **params):
        super().__init__(n_layer, capacity)
        self.unit_keys = None  # [n_layer, capacity, n_head_kv, head_dim], unit length

    def observe(self, il, obs):
        keys = obs.new_keys.astype(np.float64)
        if self.unit_keys is None:
            self.unit_keys = np.zeros((self.n_layer, self.capacity) + keys.shape[1:], dtype=np.float32)
        norm = np.linalg.norm(keys, axis=-1, keepdims=True)
        self.unit_keys[il, obs.new_slots] = keys / np.maximum(norm, 1e-12)

    def scores(self, il, positions, budget):
        occupied = positions >= 0
        keys = self.unit_keys[il, : len(positions)]
        mean = keys[occupied].mean(axis=0)  # [n_head_kv, head_dim]
        mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
        cosine = np.einsum("shd,hd->sh", keys, mean).mean(axis=1)
        return -cosine

    def state_arrays(self):
        raise NotImplementedError("keydiff's key store is not saved in sessions")

    def move(self, il, src, dst, n_keep):
        super().move(il, src, dst, n_keep)
        if self.unit_keys is not None:
            self.unit_keys[il, dst] = self.unit_keys[il, src]
            self.unit_keys[il, n_keep:] = 0.0

"""What a KV eviction policy is: one job, scoring the cached tokens of a layer.

The shared machinery (sinks, the protected recent window, top-B selection, compaction) lives
once, in :mod:`indexmem.engine.eviction`. A policy only says which observations it needs from
the forward graph and turns them into a per-slot importance; higher means keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerObservation:
    """What one forward step showed about one layer's cache slots [0, n_kv)."""

    positions: np.ndarray  # position held by each slot (-1: empty), after this step's tokens
    attn_mass: np.ndarray | None = None  # attention probability mass each slot received
    new_keys: np.ndarray | None = None  # [n_new, n_head_kv, head_dim] post-RoPE keys of this step
    new_slots: np.ndarray | None = None  # where those keys were written
    index_scores: np.ndarray | None = None  # IndexMem indexer importance, max over this step's queries
    # the indexer's queries [n_new, H_idx, d_idx] and head weights [n_new, H_idx] of this step
    index_queries: tuple[np.ndarray, np.ndarray] | None = None
    # the model's post-RoPE queries [n, n_head, head_dim] of this step's last tokens, and their
    # positions [n] (the recall tier's attention scoring)
    queries: tuple[np.ndarray, np.ndarray] | None = None


class Policy:
    name = ""
    # which queries' attention the graph must report: None, "all", "last" or "window"
    attention_queries: str | None = None
    needs_keys = False
    needs_index = False  # scores from IndexMem's indexer (needs its modules loaded)

    @classmethod
    def validate_params(cls, **params) -> None:
        """Raise ValueError for bad policy parameters (before any model is loaded)."""

    def __init__(self, n_layer: int, capacity: int, **params):
        self.n_layer = n_layer
        self.capacity = capacity
        self.state = np.zeros((n_layer, capacity), dtype=np.float64)  # per-slot importance

    def observe(self, il: int, obs: LayerObservation) -> None:
        """Fold one step's observation of layer ``il`` into its per-slot state."""

    def scores(self, il: int, positions: np.ndarray, budget: int) -> np.ndarray:
        """Importance of every slot of layer ``il`` (only occupied slots are looked at), when
        ``budget`` of them will be kept."""
        return self.state[il, : len(positions)]

    def compressed(self, il: int) -> None:
        """Called after layer ``il`` was compressed (the state was already compacted)."""

    def move(self, il: int, src: np.ndarray, dst: np.ndarray, n_keep: int) -> None:
        """Compaction moved slots ``src`` to ``dst`` and freed everything from ``n_keep`` on."""
        self.state[il, dst] = self.state[il, src]
        self.state[il, n_keep:] = 0.0

    def replaced(self, il: int, slots: np.ndarray) -> None:
        """Slots ``slots`` of layer ``il`` now hold other tokens (the recall tier swapped them):
        what was observed of the old ones is forgotten."""
        self.state[il, slots] = 0.0

    def clear(self) -> None:
        self.state.fill(0.0)

    # --- sessions ----------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything the policy remembers, as fixed-size arrays (saved in session files)."""
        return {"state": self.state}

    def load_state_arrays(self, blobs: dict[str, bytes]) -> None:
        self.state[:] = np.frombuffer(blobs["state"], dtype=self.state.dtype).reshape(self.state.shape)

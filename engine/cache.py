"""The engine's KV cache: per-layer K/V tensors in a backend buffer, and slot tables.

A slot table records, for each physical slot, the RoPE position of the token it holds (-1 if
empty). Layers whose tables are identical share one table (and so one mask and one write index
per step); eviction later gives layers tables of their own. K is stored after RoPE, so a kept
token keeps its original position whatever slot it moves to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError
from ..ggml_ops.backend import Backend, OwnsBuffer
from ..ggml_ops.bindings import C, tensor_struct
from ..ggml_ops.graph import new_context
from .cache_types import CacheTypes

KV_PAD = 256  # attention reads the used slots rounded up to this, as llama.cpp does


class SlotTable:
    def __init__(self, capacity: int):
        self.positions = np.full(capacity, -1, dtype=np.int32)
        self.n_used = 0

    @property
    def capacity(self) -> int:
        return len(self.positions)

    def check_room(self, n: int) -> None:
        """Raise unless ``n`` new tokens fit after the used slots."""
        if self.n_used + n > self.capacity:
            raise ContextOverflowError(
                f"KV cache full: {self.n_used} tokens cached, {n} more do not fit in "
                f"{self.capacity} slots (load the engine with a larger n_ctx)"
            )

    def commit(self, slots: np.ndarray, positions: np.ndarray) -> None:
        self.positions[slots] = positions
        self.n_used = max(self.n_used, int(slots.max()) + 1) if len(slots) else self.n_used

    def append(self, positions: np.ndarray) -> np.ndarray:
        """Record tokens at ``positions`` in the slots after the used ones (``check_room``
        first); returns those slots."""
        start, n = self.n_used, len(positions)
        self.positions[start : start + n] = positions
        self.n_used = start + n
        return np.arange(start, start + n, dtype=np.int64)

    def n_kv(self, n_after: int) -> int:
        return min(self.capacity, -(-max(n_after, 1) // KV_PAD) * KV_PAD)

    def mask(self, query_pos: np.ndarray, n_kv: int, slots: np.ndarray, window: int = 0) -> np.ndarray:
        """[n_tokens, n_kv] float16: 0 where the query may attend the slot, -inf elsewhere.

        ``slots`` are where this step's tokens are written; they are visible to each other
        causally even though they are not committed yet."""
        pos = self.positions[:n_kv].copy()
        pos[slots] = query_pos
        kp = pos[None, :]
        qp = query_pos[:, None]
        visible = (kp >= 0) & (kp <= qp)
        if window > 0:
            visible &= (qp - kp) < window
        return np.where(visible, np.float16(0), np.float16(-np.inf))

    def compact(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep the slots ``keep`` (sorted) and pack them into [0, len(keep)): kept tokens beyond
        that range move into the holes. Returns the moves as (source slots, destination slots)."""
        n_keep = len(keep)
        movers = keep[keep >= n_keep]
        free = np.ones(n_keep, dtype=bool)
        free[keep[keep < n_keep]] = False
        holes = np.flatnonzero(free)
        self.positions[holes] = self.positions[movers]
        self.positions[n_keep:] = -1
        self.n_used = n_keep
        return movers.astype(np.int64), holes.astype(np.int64)

    def truncate(self, n_positions: int) -> None:
        """Forget every token at position >= ``n_positions`` (they sit at the end)."""
        self.positions[self.positions >= n_positions] = -1
        used = np.flatnonzero(self.positions >= 0)
        self.n_used = int(used[-1]) + 1 if len(used) else 0

    def clear(self) -> None:
        self.positions.fill(-1)
        self.n_used = 0


@dataclass
class LayerKV:
    k: int  # ggml tensor [n_embd_kv, capacity] of the cache's K type, post-RoPE keys
    v: int  # ggml tensor [n_embd_kv, capacity] of the cache's V type
    extra: tuple = ()  # per-slot side data [*, capacity] that moves with K/V (index keys)


def head_view(ctx, t, head_dim: int, n_slots: int):
    """The first ``n_slots`` rows of a cache tensor [n_embd_kv, capacity] seen per head:
    [head_dim, n_slots, n_head_kv] (one row per slot, one head after another within it)."""
    s = tensor_struct(t)
    n_embd_kv = s.ne[0]
    return C.ggml_view_3d(
        ctx, t, head_dim, n_slots, n_embd_kv // head_dim, s.nb[1], C.ggml_row_size(s.type, head_dim), 0
    )


def add_compaction(g, layer: LayerKV, src, dst) -> None:
    """Graph nodes moving cache rows ``src`` → ``dst`` of one layer's K, V and side data inside
    the backend buffer (``src`` I32, as get_rows takes; ``dst`` I64). All rows are read before
    any is written. Quantized rows pass through f32 and are requantized to the same bytes
    (see :mod:`cache_types`)."""
    for t in (layer.k, layer.v, *layer.extra):
        g.expand(C.ggml_set_rows(g.ctx, t, C.ggml_get_rows(g.ctx, t, src), dst))


class KVCache(OwnsBuffer):
    """K/V tensors of every layer plus slot tables. ``layer_table`` maps each layer to a table;
    layers sharing a table always hold the same tokens in the same slots."""

    def __init__(
        self,
        backend: Backend,
        n_layer: int,
        n_embd_kv: int,
        capacity: int,
        types: CacheTypes = CacheTypes(),
        layer_table: list[int] | None = None,
    ):
        capacity = -(-capacity // KV_PAD) * KV_PAD
        self.capacity = capacity
        self.n_layer = n_layer
        self.types = types
        self.ctx = new_context(2 * n_layer + 1)
        self.layers = []
        for il in range(n_layer):
            k = C.ggml_new_tensor_2d(self.ctx, types.ggml_k, n_embd_kv, capacity)
            v = C.ggml_new_tensor_2d(self.ctx, types.ggml_v, n_embd_kv, capacity)
            C.ggml_set_name(k, f"cache_k_l{il}".encode())
            C.ggml_set_name(v, f"cache_v_l{il}".encode())
            self.layers.append(LayerKV(k, v))
        self.buffer = backend.alloc_ctx_tensors(self.ctx)
        C.ggml_backend_buffer_clear(self.buffer, 0)  # no NaN garbage under masked slots
        self.nbytes = C.ggml_backend_buffer_get_size(self.buffer)
        self.layer_table = list(layer_table or [0] * n_layer)
        self.tables = [SlotTable(capacity) for _ in range(max(self.layer_table) + 1)]
        self.tokens_seen = 0
        self.tokens_evicted = [0] * n_layer
        self.position_shift = 0  # conversation index - RoPE position (see context_shift)
        self.pending_moves: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer -> (src, dst)
        # layers whose evicted tokens are kept for the latent memory, until the flush reads them
        self.record_evicted: set[int] = set()
        self.pending_evicted: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer -> (slots, positions)
        self.indexmem = None  # IndexMemState (index keys, latent memory) when IndexMem is on

    def table_of(self, il: int) -> SlotTable:
        return self.tables[self.layer_table[il]]

    def tokens_cached(self) -> list[int]:
        return [int((self.table_of(il).positions >= 0).sum()) for il in range(self.n_layer)]

    def layers_of(self, table_index: int) -> list[int]:
        return [il for il, t in enumerate(self.layer_table) if t == table_index]

    def compact(self, il: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evict all but ``keep`` from layer ``il``'s table. The data moves (and the memory write
        of the evicted tokens) are queued, and run inside the backend buffers by
        :meth:`ForwardRunner.flush` before the next step."""
        t = self.layer_table[il]
        table = self.tables[t]
        n_before = table.n_used
        evicted = table.positions[:n_before] >= 0
        evicted[keep] = False
        gone = np.flatnonzero(evicted)
        gone_positions = table.positions[gone].copy()
        src, dst = table.compact(keep)
        for layer in self.layers_of(t):
            if layer in self.pending_moves or layer in self.pending_evicted:
                raise RuntimeError("compaction queued twice without a flush in between")
            if len(src):
                self.pending_moves[layer] = (src, dst)
            if layer in self.record_evicted and len(gone):
                self.pending_evicted[layer] = (gone.astype(np.int64), gone_positions)
            self.tokens_evicted[layer] += n_before - len(keep)
        return src, dst

    def truncate(self, n_positions: int) -> None:
        for t in self.tables:
            t.truncate(n_positions)

    def clear(self) -> None:
        for t in self.tables:
            t.clear()
        self.tokens_seen = 0
        self.tokens_evicted = [0] * self.n_layer
        self.position_shift = 0
        self.pending_moves = {}
        self.pending_evicted = {}

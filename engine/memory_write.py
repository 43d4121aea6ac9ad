"""Folding evicted tokens into the latent memory, inside a graph, before compaction moves them.

Eviction happens after a step, in numpy (:meth:`KVCache.compact` records the evicted slots of
memory layers in ``pending_evicted``); the evicted K/V rows are still in the cache buffer until
the compaction moves overwrite them. :meth:`ForwardRunner.flush` builds the graph that first
reads those rows, undoes RoPE (the memory works on pre-RoPE keys) and updates M, b in place,
then runs the moves.
"""

from __future__ import annotations

import numpy as np

from ..ggml_ops.bindings import C
from ..ggml_ops.indexmem import memory_write
from ..ggml_ops.structs import GGMLType
from .cache import KVCache


def add_memory_write(g, model, cache: KVCache, il: int, n_rows: int | None = None):
    """Graph nodes writing ``n_rows`` cached tokens of layer ``il`` into its memory (M, b updated
    in place): by default the tokens it evicted last, expanded before the compaction moves."""
    hp, ctx, state = model.hp, g.ctx, cache.indexmem
    layer = cache.layers[il]
    n_rows = len(cache.pending_evicted[il][0]) if n_rows is None else n_rows
    slots = g.input(f"mem_slots-{il}", GGMLType.I32, n_rows)
    neg_pos = g.input(f"mem_pos-{il}", GGMLType.I32, n_rows)
    row_weight = g.input(f"mem_rw-{il}", GGMLType.F32, 1, hp.n_head_kv * n_rows)
    decay = g.input(f"mem_decay-{il}", GGMLType.F32, 1)
    k = C.ggml_reshape_3d(ctx, C.ggml_get_rows(ctx, layer.k, slots), hp.head_dim, hp.n_head_kv, n_rows)
    k = model.rope(ctx, k, il, neg_pos)  # rotating by -position undoes RoPE
    v = C.ggml_get_rows(ctx, layer.v, slots)
    flat = hp.n_head_kv * n_rows
    new_m, new_b = memory_write(
        ctx,
        state.mem_m[il],
        state.mem_b[il],
        C.ggml_reshape_2d(ctx, k, hp.head_dim, flat),
        C.ggml_reshape_2d(ctx, v, hp.head_dim, flat),
        row_weight,
        decay,
        state.modules.memory(il),
    )
    g.expand(C.ggml_cpy(ctx, new_m, state.mem_m[il]))
    g.expand(C.ggml_cpy(ctx, new_b, state.mem_b[il]))


def memory_write_inputs(
    cache: KVCache, il: int, n_head_kv: int, slots=None, positions=None, sign: float = 1.0
) -> dict[str, np.ndarray]:
    """Input arrays of :func:`add_memory_write`: the tokens layer ``il`` evicted last, or
    ``slots`` at ``positions``. ``sign=-1`` takes tokens back out (no decay: the recall tier
    undoes a write this way, exactly when lambda is 1)."""
    modules = cache.indexmem.modules
    if slots is None:
        slots, positions = cache.pending_evicted[il]
    # every KV head of a token stands for the ``group`` query heads that share it
    w = np.full((1, len(slots) * n_head_kv), sign * modules.mem_eta * modules.group, dtype=np.float32)
    decay = modules.mem_lambda if sign > 0 else 1.0
    return {
        f"mem_slots-{il}": np.asarray(slots).astype(np.int32),
        f"mem_pos-{il}": (-np.asarray(positions)).astype(np.int32),
        f"mem_rw-{il}": w,
        f"mem_decay-{il}": np.array([decay], dtype=np.float32),
    }

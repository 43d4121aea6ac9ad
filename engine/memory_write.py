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


def add_memory_write(g, model, cache: KVCache, il: int):
    """Graph nodes writing the tokens layer ``il`` evicted last into its memory (M, b updated in
    place). Must be expanded before the layer's compaction moves."""
    hp, ctx, state = model.hp, g.ctx, cache.indexmem
    layer = cache.layers[il]
    n_rows = len(cache.pending_evicted[il][0])
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


def memory_write_inputs(cache: KVCache, il: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """Input arrays of :func:`add_memory_write` for the tokens layer ``il`` evicted last."""
    modules = cache.indexmem.modules
    slots, positions = cache.pending_evicted[il]
    # every KV head of a token stands for the ``group`` query heads that share it
    w = np.full((1, len(slots) * n_head_kv), modules.mem_eta * modules.group, dtype=np.float32)
    return {
        f"mem_slots-{il}": slots.astype(np.int32),
        f"mem_pos-{il}": (-positions).astype(np.int32),
        f"mem_rw-{il}": w,
        f"mem_decay-{il}": np.array([modules.mem_lambda], dtype=np.float32),
    }

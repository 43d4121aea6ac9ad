"""Folding evicted tokens into the latent memory, inside a graph, before compaction moves them.

Eviction happens after a step, in numpy (:meth:`KVCache.compact` records the evicted slots of
memory layers in ``pending_evicted``); the evicted K/V rows are still in the cache buffer until
the next graph's compaction moves overwrite them. So the next graph (a forward step, or
:meth:`ForwardRunner.flush`) first reads those rows, undoes RoPE (the memory works on pre-RoPE
keys), and updates M, b in place. The write carries a fixed number of rows (padding rows have
weight 0 and leave the state unchanged) so that decode steps keep sharing one graph.
"""

from __future__ import annotations

import numpy as np

from ..ggml_ops.bindings import C
from ..ggml_ops.indexmem import memory_write
from ..ggml_ops.structs import GGMLType
from .cache import KVCache


def add_memory_write(g, model, cache: KVCache, il: int, n_rows: int):
    """Graph nodes writing up to ``n_rows`` evicted tokens of layer ``il`` into its memory.
    Must be expanded before the layer's compaction moves. Returns the new (M, b) tensors."""
    hp, ctx, state = model.hp, g.ctx, cache.indexmem
    layer = cache.layers[il]
    slots = g.input(f"mem_slots-{il}", GGMLType.I32, n_rows)
    neg_pos = g.input(f"mem_pos-{il}", GGMLType.I32, n_rows)
    row_weight = g.input(f"mem_rw-{il}", GGMLType.F32, 1, hp.n_head_kv * n_rows)
    decay = g.input(f"mem_decay-{il}", GGMLType.F32, 1)
    k = C.ggml_reshape_3d(ctx, C.ggml_get_rows(ctx, layer.k, slots), hp.head_dim, hp.n_head_kv, n_rows)
    k = model.rope(ctx, k, il, neg_pos)  # rotating by -position undoes RoPE
    v = C.ggml_get_rows(ctx, layer.v, slots)
    flat = hp.n_head_kv * n_rows
    new_m, new_b = memory_write(ctx, state.mem_m[il], state.mem_b[il],
                                C.ggml_reshape_2d(ctx, k, hp.head_dim, flat),
                                C.ggml_reshape_2d(ctx, v, hp.head_dim, flat),
                                row_weight, decay, state.modules.memory(il))
    g.expand(C.ggml_cpy(ctx, new_m, state.mem_m[il]))
    g.expand(C.ggml_cpy(ctx, new_b, state.mem_b[il]))
    return new_m, new_b


def memory_write_inputs(cache: KVCache, il: int, n_rows: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """Input arrays of :func:`add_memory_write` for the tokens layer ``il`` evicted last."""
    modules = cache.indexmem.modules
    empty = np.zeros(0, dtype=np.int64)
    slots, positions = cache.pending_evicted.get(il, (empty, empty))
    n = len(slots)
    if n > n_rows:
        raise RuntimeError(f"layer {il}: {n} evicted tokens exceed the {n_rows} memory rows planned")
    s = np.zeros(n_rows, dtype=np.int32)
    s[:n] = slots
    p = np.zeros(n_rows, dtype=np.int32)
    p[:n] = -positions
    # every KV head of a token stands for the ``group`` query heads that share it
    w = np.zeros((n_rows, n_head_kv), dtype=np.float32)
    w[:n] = modules.mem_eta * modules.group
    decay = np.array([modules.mem_lambda if n else 1.0], dtype=np.float32)
    return {f"mem_slots-{il}": s, f"mem_pos-{il}": p, f"mem_rw-{il}": w.reshape(1, -1),
            f"mem_decay-{il}": decay}

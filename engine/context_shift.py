"""Context shift: move a bounded cache's RoPE positions back so a conversation can run past the
model's trained context.

A bounded cache holds at most its budget of tokens, but their positions keep growing, and a
model is only trained up to ``n_ctx`` positions. When the next position would pass it, every
cached key is re-rotated ``delta`` positions back (RoPE rotations compose, so rotating a stored
key by ``new - old`` is the same as having stored it at ``new``). Relative distances between
the recent tokens are unchanged; tokens older than ``delta`` positions, apart from the sinks,
gather at the first position after the sinks. Index keys and the latent memory carry no
position, so they are untouched. The recall tier's store is emptied: its keys were rotated for
positions that no longer exist.
"""

from __future__ import annotations

import numpy as np

from ..ggml_ops.bindings import C
from ..ggml_ops.graph import Graph
from ..ggml_ops.structs import GGMLType
from .forward import ForwardRunner

ROPE_IN_PLACE = frozenset({GGMLType.F16, GGMLType.F32})  # key types ggml's RoPE rotates directly


def shifted_positions(positions: np.ndarray, delta: int, sinks: int) -> np.ndarray:
    """Where each cached position goes (-1: empty slot stays empty)."""
    moved = np.maximum(positions - delta, np.minimum(positions, sinks))
    return np.where(positions >= 0, moved, positions).astype(np.int32)


def shift_positions(runner: ForwardRunner, delta: int, sinks: int) -> None:
    """Move every cached token of every layer ``delta`` positions back (see the module doc)."""
    if delta <= 0:
        raise ValueError(f"a context shift moves positions back by > 0, not {delta}")
    runner.flush()  # queued memory writes un-rotate evicted keys by their old positions
    if runner.recall is not None:
        runner.recall.clear()  # stored keys carry their old rotation: they cannot come back
    cache, model = runner.cache, runner.model
    hp = model.hp
    new = [shifted_positions(t.positions, delta, sinks) for t in cache.tables]
    g = Graph(max_nodes=16 + 8 * cache.n_layer + len(cache.tables))
    inputs = {}
    for ti, table in enumerate(cache.tables):
        inputs[f"rot-{ti}"] = np.where(table.positions >= 0, new[ti] - table.positions, 0).astype(np.int32)
        g.input(f"rot-{ti}", GGMLType.I32, cache.capacity)
    for il, layer in enumerate(cache.layers):
        k = C.ggml_reshape_3d(g.ctx, layer.k, hp.head_dim, hp.n_head_kv, cache.capacity)
        # RoPE runs on f16/f32 keys in place; other types as llama.cpp does: dequantize, rotate,
        # requantize (a quantized key therefore takes one more rounding per shift)
        src = k if cache.types.ggml_k in ROPE_IN_PLACE else C.ggml_cast(g.ctx, k, GGMLType.F32)
        rotated = model.rope(g.ctx, src, il, g.inputs[f"rot-{cache.layer_table[il]}"])
        g.expand(C.ggml_cpy(g.ctx, rotated, k))
    runner.run_once(g, inputs)
    for table, positions in zip(cache.tables, new):
        table.positions[:] = positions
    cache.position_shift += delta

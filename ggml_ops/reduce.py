"""Reductions that ggml has no single op for."""

from __future__ import annotations

from .bindings import C, tensor_struct
from .structs import GGMLType


def sum_over_rows(ctx, x):
    """Σ_j x[:, j] of a 2-D tensor [n, m]: [n, 1]. An outer product with a column of ones reads x
    in order; sum_rows of the transpose needs a strided copy of x first, ~9x slower for the
    [n_kv, queries x heads] attention probabilities."""
    ones = C.ggml_fill(ctx, C.ggml_new_tensor_2d(ctx, GGMLType.F32, 1, tensor_struct(x).ne[1]), 1.0)
    return C.ggml_out_prod(ctx, x, ones)


# Scores of many queries against a long cache are computed per block of queries, so that a
# block's [slots x queries x heads] intermediate stays cache-sized (64 measured best for the
# IndexMem indexer); at most MAX_QUERY_BLOCKS blocks keep the node count of a long step bounded.
QUERY_BLOCK = 64
MAX_QUERY_BLOCKS = 8


def query_blocks(n_queries: int) -> list[tuple[int, int]]:
    """(start, size) of the blocks ``n_queries`` queries are scored in."""
    block = max(QUERY_BLOCK, -(-n_queries // MAX_QUERY_BLOCKS))
    return [(start, min(block, n_queries - start)) for start in range(0, n_queries, block)]

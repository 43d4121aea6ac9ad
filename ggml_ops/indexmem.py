"""IndexMem's graph ops, composed from standard ggml ops (so every ggml backend runs them).

Nothing here knows a model: callers pass the layer's tensors. Shapes are ggml order (ne0 first).
The numerical reference is ``indexmem.train.modules`` (Indexer, LatentMemory).

- index keys      k_t = RMSNorm(U_k x_t)                               [d_idx, T]
- index queries   q_s = RMSNorm(U_q flatten(Q_s)), a_s = G x_s / sqrt(H_idx d_idx)
- importance      imp_t = max_s sum_j a_s[j] ReLU(q_s[j] . k_t)
- memory write    M <- lambda M + sum_i w_i phi(k_i) v_i^T,  b <- lambda b + sum_i w_i phi(k_i)^2
- memory read     g(q) phi(q)^T M / (phi(q)^2 . b + eps),  g(q) = sigmoid(w . q + c)
                  ("share": + log(phi(q)^2 . b + eps) - log-sum-exp of the kept attention scores)
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

from .bindings import C, tensor_struct
from .reduce import query_blocks, sum_over_rows
from .structs import GGML_OP_POOL_MAX, GGMLType


@dataclass
class IndexerWeights:
    q: int  # U_q [H*d_head, H_idx*d_idx]
    q_norm: int  # [H_idx*d_idx]
    k: int  # U_k [d_model, d_idx]
    k_norm: int  # [d_idx]
    w: int  # G [d_model, H_idx]
    n_heads: int
    dim: int
    norm_eps: float


@dataclass
class MemoryWeights:
    phi: int  # [d_head, d_mem]
    phi_bias: int  # [d_mem]
    gate: int  # [d_head, 1]
    gate_bias: int  # [1]
    eps: float
    # "add": o + g·m; "mix": o + g·(m − o); "share": the mix, its gate told the kept attention's mass
    combine: str = "add"


def _rms_norm(ctx, x, weight, eps: float):
    return C.ggml_mul(ctx, C.ggml_rms_norm(ctx, x, eps), weight)


def index_keys(ctx, x, iw: IndexerWeights):
    """x [d_model, T] → index keys [d_idx, T]."""
    return _rms_norm(ctx, C.ggml_mul_mat(ctx, iw.k, x), iw.k_norm, iw.norm_eps)


def index_queries(ctx, x, q_pre, iw: IndexerWeights):
    """x [d_model, T], pre-RoPE queries [d_head, H, T] → (q [d_idx, H_idx, T], a [H_idx, T])."""
    n = tensor_struct(x).ne[1]
    flat = C.ggml_reshape_2d(ctx, C.ggml_cont(ctx, q_pre), tensor_struct(iw.q).ne[0], n)
    q = _rms_norm(ctx, C.ggml_mul_mat(ctx, iw.q, flat), iw.q_norm, iw.norm_eps)
    q = C.ggml_reshape_3d(ctx, q, iw.dim, iw.n_heads, n)
    a = C.ggml_scale(ctx, C.ggml_mul_mat(ctx, iw.w, x), 1.0 / math.sqrt(iw.n_heads * iw.dim))
    return q, a


def importance(ctx, q, a, key_cache, n_kv: int, mask, kernel=None):
    """Max over this step's queries of the indexer score of every visible slot: [n_kv, 1].

    ``q`` [d_idx, H_idx, T], ``a`` [H_idx, T]; ``key_cache`` [d_idx, capacity] F32 holds the
    index keys per slot; ``mask`` [n_kv, >= T] F16 is the layer's attention mask (-inf where a
    query may not look). With ``kernel`` (``ggml_ops.kernel.Kernel``) the CPU kernel's op
    (``importance_kernel.c``); otherwise composed as matrix products over blocks of queries
    rather than with ggml's lightning indexer op, whose one small dot product per (query, slot,
    head) made it 2.4-3.8x slower on CPU at Gemma's sizes (d_idx 32) and up to 1.9x at SmolLM2's
    (d_idx 8). An unseen slot scores -inf (or -FLT_MAX where ggml's max pooling started from it)."""
    dim, n_heads, n = (tensor_struct(q).ne[i] for i in range(3))
    keys = C.ggml_view_2d(ctx, key_cache, dim, n_kv, tensor_struct(key_cache).nb[1], 0)
    if kernel is not None:
        args = (ctypes.c_void_p * 4)(q, a, keys, mask)
        return C.ggml_custom_4d(ctx, GGMLType.F32, n_kv, 1, 1, 1, args, 4, kernel.importance, -1, None)
    q_by_head = C.ggml_cont(ctx, C.ggml_permute(ctx, q, 0, 2, 1, 3))  # [d_idx, T, H_idx]
    a_by_head = C.ggml_reshape_3d(ctx, C.ggml_cont(ctx, C.ggml_transpose(ctx, a)), 1, n, n_heads)
    mask32 = C.ggml_cast(ctx, mask, GGMLType.F32)
    best = None
    for start, size in query_blocks(n):
        scores = _block_scores(ctx, keys, q_by_head, a_by_head, mask32, start, size)  # [n_kv, size]
        if size > 1:  # max over the block's queries: pool the rows of the transposed scores
            scores = C.ggml_pool_1d(
                ctx, C.ggml_cont(ctx, C.ggml_transpose(ctx, scores)), GGML_OP_POOL_MAX, size, size, 0
            )
        top = C.ggml_reshape_2d(ctx, scores, 1, n_kv)
        best = top if best is None else C.ggml_concat(ctx, best, top, 0)
    n_blocks = tensor_struct(best).ne[0]
    if n_blocks > 1:
        best = C.ggml_pool_1d(ctx, best, GGML_OP_POOL_MAX, n_blocks, n_blocks, 0)
    return C.ggml_reshape_2d(ctx, best, n_kv, 1)


def _block_scores(ctx, keys, q_by_head, a_by_head, mask32, start: int, size: int):
    """sum_j a[j, t] ReLU(q[:, j, t] . k_s) + mask[s, t] for the queries t in [start, start +
    size): [n_kv, size]."""
    qs, as_, ms = tensor_struct(q_by_head), tensor_struct(a_by_head), tensor_struct(mask32)
    n_heads = qs.ne[2]
    # contiguous copies of the block's queries and weights (unless the block is all of them): the
    # products below then run on ggml's fast paths (one 2-D matrix product, a broadcast multiply
    # by contiguous rows)
    whole = size == qs.ne[1]
    q_block = (
        q_by_head
        if whole
        else C.ggml_cont(
            ctx, C.ggml_view_3d(ctx, q_by_head, qs.ne[0], size, n_heads, qs.nb[1], qs.nb[2], start * qs.nb[1])
        )
    )
    a_block = (
        a_by_head
        if whole
        else C.ggml_cont(
            ctx, C.ggml_view_3d(ctx, a_by_head, 1, size, n_heads, as_.nb[1], as_.nb[2], start * as_.nb[1])
        )
    )
    raw = C.ggml_mul_mat(ctx, keys, C.ggml_reshape_2d(ctx, q_block, qs.ne[0], size * n_heads))
    n_kv = tensor_struct(raw).ne[0]
    per_head = C.ggml_mul(ctx, C.ggml_relu(ctx, C.ggml_reshape_3d(ctx, raw, n_kv, size, n_heads)), a_block)
    ps = tensor_struct(per_head)
    total = C.ggml_view_2d(ctx, mask32, ms.ne[0], size, ms.nb[1], start * ms.nb[1])
    for j in range(n_heads):
        total = C.ggml_add(ctx, total, C.ggml_view_2d(ctx, per_head, ps.ne[0], size, ps.nb[1], j * ps.nb[2]))
    return total


def _phi(ctx, x2d, mw: MemoryWeights):
    return C.ggml_add(ctx, C.ggml_mul_mat(ctx, mw.phi, x2d), mw.phi_bias)


def memory_write(ctx, M, b, keys, values, row_weight, decay, mw: MemoryWeights):
    """New memory state after folding ``keys``/``values`` [d_head, N] (pre-RoPE, one row per
    evicted token and head) with per-row weights ``row_weight`` [1, N] (η times the head group
    size for real rows, 0 for padding); ``decay`` [1] is λ (1 when nothing is written).
    Returns (M', b') with M [d_mem, d_head] and b [d_mem]."""
    fk = _phi(ctx, keys, mw)  # [d_mem, N]
    fk_w = C.ggml_mul(ctx, fk, row_weight)
    delta_m = C.ggml_out_prod(ctx, fk_w, values)  # Σ_n φ(k_n) v_nᵀ: [d_mem, d_head]
    delta_b = sum_over_rows(ctx, C.ggml_mul(ctx, C.ggml_sqr(ctx, fk), row_weight))  # [d_mem, 1]
    d_mem = tensor_struct(b).ne[0]
    new_m = C.ggml_add(ctx, C.ggml_mul(ctx, M, decay), delta_m)
    new_b = C.ggml_add(ctx, C.ggml_mul(ctx, b, decay), C.ggml_reshape_1d(ctx, delta_b, d_mem))
    return new_m, new_b


def memory_read(ctx, q_pre, M, b, mw: MemoryWeights, o_attn, lse=None):
    """The attention output o_attn [d_head*H, T] joined with the readout of the pre-RoPE queries
    [d_head, H, T]: o + g(q) m(q) ("add"), or o + g(q) (m(q) − o) ("mix", "share"). ``lse``
    [1, H*T] (head fastest): the log-sum-exp of each query's attention scores over the kept
    slots, which the "share" gate subtracts (``indexmem.train.modules.LatentMemory.gate_of``)."""
    d_head, n_head, n = tensor_struct(q_pre).ne[0], tensor_struct(q_pre).ne[1], tensor_struct(q_pre).ne[2]
    q = C.ggml_reshape_2d(ctx, C.ggml_cont(ctx, q_pre), d_head, n_head * n)
    fq = _phi(ctx, q, mw)  # [d_mem, H*T]
    num = C.ggml_mul_mat(ctx, M, fq)  # [d_head, H*T]
    d_mem = tensor_struct(b).ne[0]
    den = C.ggml_mul_mat(ctx, C.ggml_reshape_2d(ctx, b, d_mem, 1), C.ggml_sqr(ctx, fq))  # [1, H*T]
    den = C.ggml_scale_bias(ctx, den, 1.0, mw.eps)
    logit = C.ggml_add(ctx, C.ggml_mul_mat(ctx, mw.gate, q), mw.gate_bias)
    if mw.combine == "share":
        if lse is None:
            raise ValueError("the 'share' gate needs the log-sum-exp of the kept attention scores")
        logit = C.ggml_add(ctx, logit, C.ggml_sub(ctx, C.ggml_log(ctx, den), lse))
    gate = C.ggml_sigmoid(ctx, logit)
    m = C.ggml_div(ctx, num, den)
    if mw.combine != "add":
        # attention outputs come contiguous (``attend`` ends in a reshape): no copy needed
        m = C.ggml_sub(ctx, m, C.ggml_reshape_2d(ctx, o_attn, d_head, n_head * n))
    out = C.ggml_mul(ctx, m, gate)
    return C.ggml_add(ctx, o_attn, C.ggml_reshape_2d(ctx, out, d_head * n_head, n))

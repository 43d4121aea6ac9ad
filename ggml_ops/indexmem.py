"""IndexMem's graph ops, composed from standard ggml ops (so every ggml backend runs them).

Nothing here knows a model: callers pass the layer's tensors. Shapes are ggml order (ne0 first).
The numerical reference is ``indexmem.train.modules`` (Indexer, LatentMemory).

- index keys      k_t = RMSNorm(U_k x_t)                               [d_idx, T]
- index queries   q_s = RMSNorm(U_q flatten(Q_s)), a_s = G x_s / sqrt(H_idx d_idx)
- importance      imp_t = max_s sum_j a_s[j] ReLU(q_s[j] . k_t)  (ggml's lightning indexer op)
- memory write    M <- lambda M + sum_i w_i phi(k_i) v_i^T,  b <- lambda b + sum_i w_i phi(k_i)^2
- memory read     g(q) phi(q)^T M / (phi(q)^2 . b + eps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bindings import C, tensor_struct
from .reduce import sum_over_rows
from .structs import GGML_OP_POOL_MAX


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


def importance(ctx, q, a, key_cache, n_kv: int, mask):
    """Max over this step's queries of the indexer score of every visible slot: [n_kv].

    ``key_cache`` [d_idx, capacity] F32 holds the index keys per slot; ``mask`` [n_kv, T] F16 is
    the layer's attention mask (-inf where a query may not look)."""
    dim = tensor_struct(key_cache).ne[0]
    keys = C.ggml_view_3d(ctx, key_cache, dim, 1, n_kv, tensor_struct(key_cache).nb[1],
                          tensor_struct(key_cache).nb[1], 0)
    scores = C.ggml_lightning_indexer(ctx, q, keys, a, mask)  # [n_kv, T]
    n = tensor_struct(scores).ne[1]
    if n == 1:
        return C.ggml_reshape_1d(ctx, scores, n_kv)
    by_key = C.ggml_cont(ctx, C.ggml_transpose(ctx, C.ggml_reshape_2d(ctx, scores, n_kv, n)))  # [T, n_kv]
    return C.ggml_pool_1d(ctx, by_key, GGML_OP_POOL_MAX, n, n, 0)  # [1, n_kv]


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


def memory_read(ctx, q_pre, M, b, mw: MemoryWeights):
    """Readout g(q) m(q) for pre-RoPE queries [d_head, H, T]: [d_head*H, T]."""
    d_head, n_head, n = tensor_struct(q_pre).ne[0], tensor_struct(q_pre).ne[1], tensor_struct(q_pre).ne[2]
    q = C.ggml_reshape_2d(ctx, C.ggml_cont(ctx, q_pre), d_head, n_head * n)
    fq = _phi(ctx, q, mw)  # [d_mem, H*T]
    num = C.ggml_mul_mat(ctx, M, fq)  # [d_head, H*T]
    d_mem = tensor_struct(b).ne[0]
    den = C.ggml_mul_mat(ctx, C.ggml_reshape_2d(ctx, b, d_mem, 1), C.ggml_sqr(ctx, fq))  # [1, H*T]
    den = C.ggml_scale_bias(ctx, den, 1.0, mw.eps)
    gate = C.ggml_sigmoid(ctx, C.ggml_add(ctx, C.ggml_mul_mat(ctx, mw.gate, q), mw.gate_bias))
    out = C.ggml_mul(ctx, C.ggml_div(ctx, num, den), gate)
    return C.ggml_reshape_2d(ctx, out, d_head * n_head, n)

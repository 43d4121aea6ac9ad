"""Losses of METHOD.md section 4: the streaming KL of the indexer and the memory residual loss.

The max over queries is taken block by block with a running max per key, and each query block
is recomputed in the backward pass (checkpointing), so memory is O(L) rather than O(L²).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

NEG = float("-inf")


def _block_max(score_fn, s0: int, s1: int, n_keys: int):
    """max over queries [s0, s1) of causal scores, per key: [n_keys]."""
    scores = score_fn(s0, s1)  # [s1 - s0, n_keys]
    s = torch.arange(s0, s1).unsqueeze(1)
    t = torch.arange(n_keys).unsqueeze(0)
    return scores.masked_fill(t > s, NEG).amax(0)


def streaming_max(score_fn, n: int, block: int = 256, grad: bool = True, start: int = 0):
    """max over queries start <= s < n, s >= t, of score(s, t) for every key t < n, with
    score_fn(s0, s1) -> [s1 - s0, n]."""
    best = torch.full((n,), NEG)
    for s0 in range(start, n, block):
        s1 = min(n, s0 + block)
        if grad and torch.is_grad_enabled():
            blk = checkpoint(_block_max, score_fn, s0, s1, n, use_reentrant=False)
        else:
            blk = _block_max(score_fn, s0, s1, n)
        best = torch.maximum(best, blk)
    return best


def teacher_logits(q_cur, k_cur, block: int = 256, scale: float | None = None, min_distance: int = 0):
    """max over queries and heads of the attention logit q_s . k_t * scale (default
    1/sqrt(d_head)), causal: [L]. q_cur [L, H, d], k_cur [L, H_kv, d] as attention uses them
    (grouped heads are expanded). ``min_distance`` > 0 counts only queries s >= t + min_distance:
    a query that close still sees the token through the protected recent window, so what should
    decide its eviction is how much the distant queries want it (keys with no such query: -inf)."""
    group = q_cur.shape[1] // k_cur.shape[1]
    k = k_cur.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q_cur.shape[-1]) if scale is None else scale
    keys = torch.arange(k.shape[0]).unsqueeze(0)

    def score_fn(s0, s1):
        scores = torch.einsum("shd,thd->sht", q_cur[s0:s1], k).amax(1) * scale
        if min_distance:
            scores = scores.masked_fill(keys > torch.arange(s0, s1).unsqueeze(1) - min_distance, NEG)
        return scores

    with torch.no_grad():
        return streaming_max(score_fn, q_cur.shape[0], block, grad=False)


def indexer_importance(indexer, x, q_pre, block: int = 256, grad: bool = True):
    """imp_t = max_{s >= t} A[s, t] over all queries of the sequence: [L]."""
    return window_importance(indexer, x, q_pre, 0, x.shape[0], block, grad)


def window_importance(indexer, x, q_pre, s0: int, s1: int, block: int = 256, grad: bool = True):
    """imp_t = max_{s0 <= s < s1, s >= t} A[s, t] for the keys t < s1: what one compression round
    sees when the queries [s0, s1) decide, as during chunked prefill. Keys t < s0 are scored by
    every query of the window; t >= s0 only by the queries at or after them."""
    q, a = indexer.queries(x[s0:s1], q_pre[s0:s1])
    k = indexer.keys(x[:s1])
    return streaming_max(
        lambda b0, b1: indexer.scores(q[b0 - s0 : b1 - s0], a[b0 - s0 : b1 - s0], k),
        s1,
        block,
        grad,
        start=s0,
    )


def kl_loss(teacher, student, sinks: int = 4):
    """KL(softmax(teacher) || softmax(student)) over keys, sink positions and keys the teacher
    gives no score (-inf) excluded."""
    t, s = teacher[sinks:], student[sinks:]
    scored = torch.isfinite(t)
    t, s = t[scored], s[scored]
    log_pt = torch.log_softmax(t, dim=0)
    return torch.sum(log_pt.exp() * (log_pt - torch.log_softmax(s, dim=0)))


def naive_kl_loss(indexer, x, q_pre, q_cur, k_cur, sinks: int = 4):
    """The same loss with the full L x L matrices, for tests."""
    n = x.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    q, a = indexer.queries(x, q_pre)
    A = indexer.scores(q, a, indexer.keys(x)).masked_fill(~causal, NEG).amax(0)
    group = q_cur.shape[1] // k_cur.shape[1]
    T = torch.einsum("shd,thd->sht", q_cur, k_cur.repeat_interleave(group, 1)).amax(1)
    T = (T / math.sqrt(q_cur.shape[-1])).masked_fill(~causal, NEG).amax(0)
    return kl_loss(T, A, sinks)


def masked_scores(q, k, visible, scale: float):
    """scale·q·k of q [Lq, H, d] against k [Lk, H_kv, d] (grouped heads shared), NEG where
    visible [Lq, Lk] is False: [H, Lq, Lk]."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    return torch.einsum("shd,thd->hst", q, k).mul(scale).masked_fill(~visible, NEG)


def attention(q, k, v, visible, scale: float | None = None, with_lse: bool = False):
    """Softmax attention of q [Lq, H, d] over k, v [Lk, H_kv, d] where visible [Lq, Lk]: [Lq, H*d]
    (and with ``with_lse`` the log-sum-exp of each query's scores per head, [Lq, H])."""
    v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = masked_scores(q, k, visible, scale)
    o = torch.einsum("hst,thd->shd", torch.softmax(logits, dim=-1), v).flatten(1)
    return (o, torch.logsumexp(logits, -1).transpose(0, 1)) if with_lse else o


def memory_loss(memory, o_full, o_kept, q_pre_trail, k_pre_evicted, v_evicted, lse_kept=None):
    """‖o_full − o_attn(kept) − g(q)·m(q)‖² (mean over trailing queries; the memory's combine
    rule joins o_attn and the readout) after the evicted (pre-RoPE) keys and values, every head,
    were written to an empty memory. ``lse_kept`` [Lq, H]: the "share" gate's input."""
    n_head, d = q_pre_trail.shape[1], q_pre_trail.shape[2]
    group = n_head // k_pre_evicted.shape[1]
    k = k_pre_evicted.repeat_interleave(group, 1).reshape(-1, d)
    v = v_evicted.repeat_interleave(group, 1).reshape(-1, d)
    state = memory.write(memory.empty_state(), k, v)
    o = memory.combine(state, q_pre_trail, o_kept.view(q_pre_trail.shape), lse_kept).flatten(1)
    return ((o_full - o) ** 2).sum(-1).mean()

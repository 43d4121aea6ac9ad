"""Scoring by the model's own attention for the recall tier (``recall_score="attention"``).

At the compression after a prompt's last chunk, the prompt's last queries (its question, in a
retrieval prompt) attend over every token the layer has seen, cached or stored; a token's
importance is the attention probability it gets, summed over those queries and taken at the head
that gives it most, then max-pooled over neighbouring positions as the cached scores are. Cached
and stored tokens compete on this one measure, so the kept set is what the question's attention
wants rather than what the indexer guessed before the question arrived.

The softmax runs over all the layer's tokens at once, cached and stored, in two passes over
blocks of keys (log-sum-exp first, then the probabilities), so the temporaries stay one block
wide whatever the store's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ..ggml_ops.structs import GGMLType


def key_floats(raw: np.ndarray, ggml_type: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """K rows as the cache stores them ([n, row bytes] uint8, any cache type) as float32
    [n, n_head_kv, head_dim]."""
    n = len(raw)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if ggml_type == GGMLType.F32:
        out = raw.view(np.float32)
    elif ggml_type == GGMLType.F16:
        out = raw.view(np.float16).astype(np.float32)
    elif ggml_type == GGMLType.BF16:
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        out = dequantize(raw, GGMLQuantizationType(int(ggml_type))).astype(np.float32)
    return out.reshape(n, n_head_kv, head_dim)


def grouped_dots(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """[T, H, n] q . k times ``scale`` for queries [T, H, d] and keys [n, H_kv, d], grouped-query
    heads sharing their K head."""
    t, h, d = q.shape
    hkv = k.shape[1]
    grouped = q.reshape(t, hkv, h // hkv, d)
    out = np.einsum("tkgd,nkd->tkgn", grouped, k, optimize=True).reshape(t, h, len(k))
    out *= scale
    return out


def _logits(q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray, scale: float) -> np.ndarray:
    """[T, H, n] q . k times ``scale`` (``grouped_dots``); keys after a query's position masked
    (-inf)."""
    out = grouped_dots(q, k, scale)
    future = k_pos[None, :] > q_pos[:, None]  # [T, n]
    if future.any():
        out[np.broadcast_to(future[:, None, :], out.shape)] = -np.inf
    return out


def attention_importance(
    q: np.ndarray,
    q_pos: np.ndarray,
    blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    scale: float | None = None,
) -> list[np.ndarray]:
    """Per block of keys, each key's importance: sum over queries of its softmax probability
    (softmax over every key of every block), max over heads. ``q`` [T, H, d] float32,
    ``q_pos`` [T]; ``blocks()`` yields (keys [n, H_kv, d] float32, positions [n]) and is called
    twice (both passes read the keys again). ``scale``: of the logits (default 1/sqrt(d))."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lse = np.full(q.shape[:2], -np.inf)
    for k, k_pos in blocks():
        if len(k):
            lse = np.logaddexp(lse, _logsumexp(_logits(q, q_pos, k, k_pos, scale)))
    out = []
    for k, k_pos in blocks():
        if not len(k):
            out.append(np.zeros(0))
            continue
        p = np.exp(_logits(q, q_pos, k, k_pos, scale) - lse[:, :, None])
        out.append(p.sum(axis=0).max(axis=0).astype(np.float64))
    return out


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(x - safe[..., None]).sum(axis=-1))

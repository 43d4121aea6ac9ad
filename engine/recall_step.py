"""Recall at every step, by the step's own attention (``recall_at="each_step"``).

A needle that only the question makes important is evicted while the prompt is read, and the
queries that point at it come late: the question's last token, and the answer's tokens. From a
prompt's last token on, every one-token step's queries (the model's own, post-RoPE) attend over
the layer's cached and stored tokens at once; a stored token that some head gives more than
``STEP_THRESHOLD`` of its attention replaces the cached token that this query attends least
(sinks, the recent window and the step's own token never leave), at most ``per_step`` per
layer, and the step is run again on the swapped cache. The cache keeps its size: the budget
B + tau holds, and every layer keeps as many tokens as before.

A swapped-out token goes to the store (and, in latent-memory layers, into M and b when the
memory's decay is 1, exactly as the recalled token is taken out of them; with another decay
neither is touched). A step that compressed the cache swaps nothing and is not run again: its
token's slot has moved, and its queries are dropped.

The threshold was chosen on held-out retrieval windows of the training corpus (answer
likelihood, ``train/recall_select.py``'s measure), never on evaluation data.
"""

from __future__ import annotations

import numpy as np

from .attention import attention_kernel
from .recall import PER_STEP
from .recall_attention import grouped_dots, key_floats

STEP_THRESHOLD = 0.05  # attention probability (at some head) that brings a stored token back
STEP_PER_STEP = 32  # swaps per layer and step, at most


def default_per_step(at: str) -> int:
    """Tokens brought back per layer at most (at a compression, or per step with
    at="each_step") when no limit is set."""
    return STEP_PER_STEP if at == "each_step" else PER_STEP


def choose_swaps(
    probs_cached: np.ndarray,
    protected: np.ndarray,
    probs_stored: np.ndarray,
    per_step: int,
    threshold: float = STEP_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """(cached indices to give up, stored indices to take), paired: the stored tokens above
    ``threshold``, most attended first, each against the least attended cached token left,
    while the stored one is attended more."""
    wanted = np.flatnonzero(probs_stored > threshold)
    wanted = wanted[np.argsort(-probs_stored[wanted], kind="stable")][:per_step]
    weak = np.flatnonzero(~protected)
    weak = weak[np.argsort(probs_cached[weak], kind="stable")][: len(wanted)]
    n = 0
    while n < min(len(wanted), len(weak)) and probs_stored[wanted[n]] > probs_cached[weak[n]]:
        n += 1
    return weak[:n], wanted[:n]


def query_logits(q: np.ndarray, rows: np.ndarray, key_format, kernel=None) -> np.ndarray:
    """The attention logits [H, n] float32 of one query ``q`` [H, d] over K rows as the cache
    stores them ([n, row bytes] uint8); grouped-query heads share their K head. The CPU kernel
    reads the rows as they are (``Kernel.query_logits``); without it they are converted to
    float32 first (``key_floats``), several times slower over a long store."""
    k_type, n_head_kv, head_dim, scale = key_format
    if kernel is not None and kernel.supports(k_type, k_type, head_dim):
        return kernel.query_logits(k_type, rows, n_head_kv, q, scale)
    k = key_floats(rows, k_type, n_head_kv, head_dim)
    return np.ascontiguousarray(grouped_dots(q[None], k, scale)[0], dtype=np.float32)


def one_query_probabilities(blocks, q_pos: int) -> list[np.ndarray]:
    """Per block of keys, the max-head softmax probability one query gives each key, the softmax
    taken over every block at once. ``blocks`` holds (logits [H, n] float32, positions [n],
    hidden [n] bool or None); keys after ``q_pos`` and hidden ones get 0 (their logits are
    overwritten with -inf). Each head's log-sum-exp comes first, then every key's largest
    log-probability over the heads: no block is copied or joined to another."""
    for part, k_pos, hidden in blocks:
        part[:, np.asarray(k_pos) > q_pos] = -np.inf
        if hidden is not None:
            part[:, hidden] = -np.inf
    parts = [part for part, _, _ in blocks]
    top = np.full(parts[0].shape[0], -np.inf, dtype=np.float32)
    for part in parts:
        if part.shape[1]:
            np.maximum(top, part.max(axis=1), out=top)
    top[~np.isfinite(top)] = 0.0  # a head that sees no key: every probability 0
    sums = sum(np.exp(part - top[:, None]).sum(axis=1) for part in parts)
    lse = top + np.log(np.maximum(sums, np.finfo(np.float32).tiny))
    return [np.exp((part - lse[:, None]).max(axis=0, initial=-np.inf)).astype(np.float64) for part in parts]


def step_probabilities(recall, il: int, cache, positions: np.ndarray, q, q_pos):
    """Max-head attention probability of the step's query over the layer's cached tokens
    [n_used] and its live stored tokens (entries, positions, probabilities), one softmax over
    both. Stored rows are scored a block at a time as the store holds them (taken entries too,
    then hidden: gathering the live ones would copy the block)."""
    query, kernel = q[-1].astype(np.float32), attention_kernel()
    cached_rows, cached_pos = recall.cached_key_rows(il, cache, positions)
    blocks = [(query_logits(query, cached_rows, recall.key_format, kernel), cached_pos, None)]
    live_entries = [np.zeros(0, np.int64)]
    for start, pos, rows, taken in recall.store.blocks(il, "k"):
        blocks.append((query_logits(query, rows, recall.key_format, kernel), pos.astype(np.int64), taken))
        live_entries.append(start + np.flatnonzero(~taken))
    parts = one_query_probabilities(blocks, int(q_pos[-1]))
    entries = np.concatenate(live_entries)
    stored_pos = np.concatenate([np.zeros(0, np.int64), *(b[1][~b[2]] for b in blocks[1:])])
    p_stored = np.concatenate([np.zeros(0), *(p[~b[2]] for p, b in zip(parts[1:], blocks[1:]))])
    return parts[0], (entries, stored_pos, p_stored)


def swap_for_step(runner, positions: np.ndarray, n_used_before: list[int]) -> bool:
    """After a one-token step: choose the swaps its queries want, take the step's token back out
    of the cache and make them. True when the step must be run again."""
    recall, cache, evictor = runner.recall, runner.cache, runner.evictor
    queries = recall.take_step_queries()
    if any(t.n_used != n + len(positions) for t, n in zip(cache.tables, n_used_before)):
        return False  # the step compressed: its token's slot has moved
    picks = {}
    for il, (q, q_pos) in queries.items():
        rule = evictor.rules[il]
        table = cache.table_of(il)
        cached = table.positions[: table.n_used]
        p_cached, (entries, stored_pos, p_stored) = step_probabilities(recall, il, cache, cached, q, q_pos)
        newest = int(q_pos.max())
        protected = (cached < rule.sinks) | (cached > newest - max(rule.window, 1)) | (cached < 0)
        out, back = choose_swaps(p_cached, protected, p_stored, recall.per_step)
        if len(out):
            picks[il] = (out.astype(np.int64), entries[back], stored_pos[back])
    if not picks:
        return False
    cache.truncate(int(positions[0]))  # the step's tokens leave; the step runs again
    cache.tokens_seen -= len(positions)
    memory_exact = recall.exact_memory and cache.indexmem is not None
    for il, (slots, entries, stored_pos) in picks.items():
        table = cache.table_of(il)
        recall.pending_store[il] = (slots, table.positions[slots].copy())
        if il in cache.record_evicted and memory_exact:
            cache.pending_evicted[il] = (slots, table.positions[slots].copy())
        table.commit(slots, stored_pos)
        recall.pending_recall[il] = (slots, entries)
        evictor.policy.replaced(il, slots)
    runner.flush()
    return True

"""Fact recall under chunked prefill, simulated offline on full-KV features (``train/features.py``).

The sequence is read in chunks and after every chunk the cache is compressed to its budget, as
``indexmem-bench ruler`` does: the sinks and the most recent tokens stay, each scorer chooses the
rest from what the engine's policy of that name would have observed, attention taken over what
is still cached. The figure is the share of the facts' tokens in the cache after the last chunk,
the one that holds the questions, so the question-aware scorers (SnapKV, TOVA) make their last
choice as they do in the engine. Layers are simulated one at a time with the inputs of an
uncompressed run: an estimate, in minutes, of what RULER measures in hours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import window_importance

SCORERS = ("streaming", "h2o", "snapkv", "tova", "indexmem")
SNAPKV_WINDOW, SNAPKV_KERNEL = 32, 5  # the engine's snapkv defaults
H2O_RECENT_SHARE = 0.5  # of the budget, as the engine's h2o policy


def snapkv_pool(scores: torch.Tensor) -> torch.Tensor:
    """SnapKV's max-pool over neighbouring positions (``scores`` in position order)."""
    return F.max_pool1d(scores.view(1, 1, -1), SNAPKV_KERNEL, stride=1, padding=SNAPKV_KERNEL // 2).view(-1)


def cached_attention(f: dict, keys: torch.Tensor, c0: int, c1: int, scale: float) -> torch.Tensor:
    """Softmax attention [heads, c1 - c0, len(keys)] of the chunk's queries over the cached
    ``keys`` (ascending positions, every one before the query or the query itself)."""
    q = f["q_cur"][c0:c1]
    k = f["k_cur"][keys].repeat_interleave(q.shape[1] // f["k_cur"].shape[1], 1)
    logits = torch.einsum("shd,thd->hst", q, k) * scale
    visible = keys.unsqueeze(0) <= torch.arange(c0, c1).unsqueeze(1)
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


def _decay(importance: torch.Tensor, gamma: float) -> torch.Tensor:
    """The indexmem policy's carry-over across a compression (gamma = 0: nothing carried)."""
    if gamma == 0.0:
        return torch.full_like(importance, float("-inf"))
    out = importance.clone()
    finite = torch.isfinite(out)
    out[finite] = torch.where(out[finite] > 0, gamma * out[finite], out[finite] / gamma)
    return out


def chunked_cache(
    f: dict,
    scorer: str,
    budget: int,
    chunk: int,
    scale: float,
    sinks: int = 4,
    recent: int = 16,
    indexer=None,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Positions left in the cache after the whole sequence of ``f`` has been prefilled in
    ``chunk``-token chunks with ``scorer`` compressing to ``budget`` after every chunk."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: one of {', '.join(SCORERS)}")
    if scorer == "indexmem" and indexer is None:
        raise ValueError("the indexmem scorer needs the layer's indexer")
    n = f["x"].shape[0]
    empty = float("-inf") if scorer == "indexmem" else 0.0
    cached, carried = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        keys = torch.cat([cached, torch.arange(c0, c1)])
        state = torch.cat([carried, torch.full((c1 - c0,), empty)])
        if scorer != "streaming" and scorer != "indexmem":
            probs = cached_attention(f, keys, c0, c1, scale)
        if scorer == "h2o":
            state = state + probs.sum((0, 1))
        elif scorer == "snapkv":
            state = state + probs[:, -SNAPKV_WINDOW:, :].sum((0, 1))
        elif scorer == "tova":
            state = probs[:, -1, :].sum(0)
        elif scorer == "indexmem":
            imp = window_importance(indexer, f["x"], f["q_pre"], c0, c1, grad=False)
            state = torch.maximum(state, imp[keys])
        if len(keys) <= budget:
            cached, carried = keys, state
            continue
        score = keys.float() if scorer == "streaming" else state.clone()
        if scorer == "snapkv":
            score = snapkv_pool(score)
        newest = c1 - 1
        protected = (keys < sinks) | (keys > newest - recent)
        if scorer == "h2o":
            protected |= keys > newest - int(budget * H2O_RECENT_SHARE)
        score[protected] = float("inf")
        # highest score first, ties to the more recent token, as the engine breaks them
        by_recency = torch.argsort(keys, descending=True)
        order = by_recency[torch.sort(score[by_recency], descending=True, stable=True).indices]
        keep = order[:budget].sort().values
        cached, state = keys[keep], state[keep]
        if scorer == "snapkv":
            carried = torch.zeros_like(state)  # the next round observes the queries after it
        elif scorer == "indexmem":
            carried = _decay(state, gamma)
        else:
            carried = state
    return cached


def fact_shares_chunked(
    f: dict,
    facts: torch.Tensor,
    budgets: dict[float, int],
    chunk: int,
    scale: float,
    sinks: int,
    recent: int,
    indexer=None,
    gamma: float = 0.0,
):
    """(scorer, ratio, share of the ``facts`` positions still cached) for one sequence and layer,
    ``budgets`` mapping each eviction ratio to its budget."""
    for scorer in SCORERS:
        for ratio, budget in budgets.items():
            cached = chunked_cache(f, scorer, budget, chunk, scale, sinks, recent, indexer, gamma)
            yield scorer, ratio, float(torch.isin(facts, cached).float().mean())

"""The student's per-layer KV cache and its eviction, as ``engine/eviction.py`` and the
``indexmem`` policy decide it.

A layer caches, in position order: positions, post-RoPE keys and values (rounded to float16 as
the engine stores them), index keys, and the indexer importance of each token: the max of its
scores over the queries seen since the layer's last compression (-inf before any). Compression
keeps the sinks, the recent window and the best-scored rest (scores max-pooled over
``pool_kernel`` cached neighbours; ties to the more recent token); sliding-window layers whose
window fits the budget keep their window instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG = float("-inf")


@dataclass(frozen=True)
class EvictionRule:
    budget: int
    sinks: int
    window: int
    by_indexer: bool  # False: keep the most recent (sliding-window layers)


@dataclass(frozen=True)
class BoundedSettings:
    """The engine's BudgetConfig for the ``indexmem`` policy (gamma 0: importance restarts after
    every compression)."""

    budget: int
    sinks: int = 4
    window: int = 64
    tau: int = 16
    pool_kernel: int = 1

    def rule(self, sliding_window: int) -> EvictionRule:
        if sliding_window and self.budget >= sliding_window:
            return EvictionRule(sliding_window, 0, sliding_window, False)
        return EvictionRule(self.budget, self.sinks, self.window, True)


class LayerCache:
    def __init__(self):
        self.pos = torch.zeros(0, dtype=torch.long)
        self.k = self.v = self.index_keys = None
        self.importance = torch.zeros(0)

    def __len__(self) -> int:
        return len(self.pos)

    def extended(self, pos, k, v):
        """(positions, keys, values) of the cache with this step's tokens after it."""
        if self.k is None:
            return pos, k, v
        return torch.cat([self.pos, pos]), torch.cat([self.k, k]), torch.cat([self.v, v])

    def store(self, pos, k, v, index_keys=None, importance=None):
        self.pos, self.k, self.v = pos, k.detach(), v.detach()
        if index_keys is not None:
            self.index_keys, self.importance = index_keys.detach(), importance.detach()

    def keep_only(self, keep: torch.Tensor) -> None:
        self.pos, self.k, self.v = self.pos[keep], self.k[keep], self.v[keep]
        if self.index_keys is not None:
            self.index_keys = self.index_keys[keep]
            self.importance = torch.full((int(keep.sum()),), NEG)


def pool_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max over ``kernel`` neighbours in position order (the cache is kept in that order)."""
    if kernel == 1:
        return scores
    return F.max_pool1d(scores.view(1, 1, -1), kernel, stride=1, padding=kernel // 2).view(-1)


def to_keep(cache: LayerCache, rule: EvictionRule, pool_kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boolean mask of the slots a compression keeps, the scores it ranked: +inf where
    protected)."""
    pos = cache.pos
    if rule.by_indexer:
        scores = pool_scores(cache.importance.to(torch.float64), pool_kernel).clone()
    else:
        scores = pos.to(torch.float64)
    protected = (pos < rule.sinks) | (pos > pos.max() - rule.window)
    scores[protected] = float("inf")
    # highest score first, ties to the more recent token (the cache is in position order)
    by_recency = torch.arange(len(pos) - 1, -1, -1)
    order = by_recency[torch.sort(scores[by_recency], descending=True, stable=True).indices]
    keep = torch.zeros(len(pos), dtype=torch.bool)
    keep[order[: rule.budget]] = True
    return keep, scores


def needs_compression(n_used: int, rule: EvictionRule, n_tokens: int, tau: int) -> bool:
    over = n_used - rule.budget
    return over > 0 and (n_tokens > 1 or over >= tau)

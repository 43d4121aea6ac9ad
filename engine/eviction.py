"""Budgeted eviction: when to compress, what to keep, and how the cache is compacted.

Per layer, the cache keeps at most ``budget`` tokens: after every prefill chunk, and during
decoding whenever it has grown ``tau`` tokens past the budget. The first ``sinks`` positions and
the ``window`` most recent ones are always kept; the policy's scores choose the rest. Layers
with a sliding window (Gemma 3 local layers) keep their window instead, unless the budget is
smaller than the window, in which case the policy applies to them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import KVCache
from .policies import POLICIES
from .policies.base import LayerObservation


@dataclass(frozen=True)
class BudgetConfig:
    policy: str = "full"
    budget: int | None = None  # tokens per layer; None with policy "full"
    sinks: int = 4
    window: int = 0  # most recent tokens always kept
    tau: int = 16  # compress when a layer has grown this far past the budget (1: every step)
    params: dict = field(default_factory=dict)  # policy-specific (seed, obs_window, pool_kernel)

    @property
    def bounded(self) -> bool:
        return self.policy != "full" and self.budget is not None

    def validate(self) -> BudgetConfig:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.sinks < 0 or self.window < 0:
            raise ValueError(f"sinks and window must be >= 0 (got {self.sinks}, {self.window})")
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1 (1 compresses every step), got {self.tau}")
        if self.policy != "full":
            if self.budget is None:
                raise ValueError(f"policy {self.policy!r} needs a budget (tokens per layer)")
            if self.budget < 1 or self.budget <= self.sinks + self.window:
                raise ValueError(
                    f"budget {self.budget} must exceed sinks + window ({self.sinks} + {self.window})"
                )
        POLICIES[self.policy].validate_params(**self.params)
        return self


def budget_from_ratio(n_tokens: int, evict_ratio: float) -> int:
    """The per-layer budget that evicts ``evict_ratio`` of a ``n_tokens`` context."""
    if not 0.0 <= evict_ratio < 1.0:
        raise ValueError(f"evict_ratio must be in [0, 1), got {evict_ratio}")
    return max(1, int(round(n_tokens * (1.0 - evict_ratio))))


@dataclass(frozen=True)
class LayerRule:
    budget: int
    sinks: int
    window: int
    by_policy: bool  # False: keep the most recent (sliding-window layers)


class Evictor:
    """Applies a :class:`BudgetConfig` to a :class:`KVCache` after every forward step."""

    def __init__(self, config: BudgetConfig, cache: KVCache, layer_windows: list[int]):
        self.config = config.validate()
        self.cache = cache
        self.policy = POLICIES[config.policy](cache.n_layer, cache.capacity, **config.params)
        self.rules = [self._rule(w) for w in layer_windows]
        self.recall = None  # the recall tier (engine/recall.py): stored tokens compete for the budget

    def _rule(self, sliding_window: int) -> LayerRule:
        c = self.config
        if sliding_window and c.budget >= sliding_window:
            return LayerRule(budget=sliding_window, sinks=0, window=sliding_window, by_policy=False)
        return LayerRule(budget=c.budget, sinks=c.sinks, window=c.window, by_policy=True)

    # --- what the graph must report ----------------------------------------------------
    def attention_queries(self, n_tokens: int) -> tuple[int, ...]:
        """How many of this step's last queries must report their attention, per layer."""
        kind = self.policy.attention_queries
        if kind is None:
            n = 0
        elif kind == "all":
            n = n_tokens
        elif kind == "window":
            n = min(n_tokens, self.policy.obs_window)
        else:
            n = 1
        return tuple(n if rule.by_policy else 0 for rule in self.rules)

    # --- after a step ------------------------------------------------------------------
    def after_step(self, observations: dict[int, LayerObservation], n_tokens: int) -> None:
        for il in range(self.cache.n_layer):
            rule = self.rules[il]
            if rule.by_policy and il in observations:
                self.policy.observe(il, observations[il])
                if self.recall is not None:
                    self.recall.observe(il, observations[il])
            table = self.cache.table_of(il)
            over = table.n_used - rule.budget
            if over > 0 and (n_tokens > 1 or over >= self.config.tau):
                self._compress(il, rule)

    def _compress(self, il: int, rule: LayerRule) -> None:
        table = self.cache.table_of(il)
        positions = table.positions[: table.n_used].copy()
        if rule.by_policy:
            scores = self.policy.scores(il, positions, rule.budget).astype(np.float64).copy()
        else:
            scores = positions.astype(np.float64)
        recall = self.recall if rule.by_policy and self.recall and il in self.recall.layers else None
        if recall and recall.has_queries(il):  # cached and stored tokens on the model's attention
            scores, (entries, stored_pos, stored_scores) = recall.attention_scores(il, self.cache, positions)
        else:
            entries, stored_pos, stored_scores = recall.candidates(il) if recall else ((), (), ())
        newest = positions.max()
        protected = (positions < rule.sinks) | (positions > newest - rule.window)
        scores[protected] = np.inf
        scores[positions < 0] = -np.inf
        # cached tokens and stored candidates ranked together; highest score first, ties go to
        # the more recent token
        all_pos = np.concatenate([positions, stored_pos]).astype(np.int64)
        order = np.lexsort((-all_pos, -np.concatenate([scores, stored_scores])))[: rule.budget]
        keep = np.sort(order[order < len(positions)])
        back = order[order >= len(positions)] - len(positions)
        if recall:
            gone = np.setdiff1d(np.flatnonzero(positions >= 0), keep, assume_unique=True)
            recall.pending_store[il] = (gone, positions[gone])
        src, dst = self.cache.compact(il, keep)
        self.policy.move(il, src, dst, len(keep))
        if len(back):
            slots = np.arange(len(keep), len(keep) + len(back))
            table.commit(slots, np.asarray(stored_pos)[back])
            recall.pending_recall[il] = (slots, np.asarray(entries)[back])
            self.cache.tokens_evicted[il] -= len(back)
        if rule.by_policy:
            self.policy.compressed(il)
        if recall:
            recall.compressed(il)

    def clear(self) -> None:
        self.policy.clear()

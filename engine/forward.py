"""One forward step: plan → (reused or new) graph → inputs → compute → logits.

The last graph stays built and allocated; a step whose :class:`StepPlan` equals the previous
one only refreshes the inputs, as llama.cpp's graph reuse does. In decoding the plan changes
only when the visible cache grows past a multiple of 256 slots.
"""

from __future__ import annotations

import numpy as np

from ..ggml_ops.backend import Backend
from .cache import KVCache
from .models.builder import Builder, StepPlan


class ForwardRunner:
    def __init__(self, model, cache: KVCache, backend: Backend):
        self.model = model
        self.cache = cache
        self.backend = backend
        self._plan: StepPlan | None = None
        self._graph = None
        self.graphs_built = 0

    def plan(self, n_tokens: int, all_logits: bool, capture=()) -> tuple[StepPlan, list[np.ndarray]]:
        cache, hp = self.cache, self.model.hp
        slots = [t.reserve(n_tokens) for t in cache.tables]
        n_kv = tuple(t.n_kv(t.n_used + n_tokens) for t in cache.tables)
        plan = StepPlan(
            n_tokens=n_tokens,
            n_out=n_tokens if all_logits else 1,
            layer_table=tuple(cache.layer_table),
            n_kv=n_kv,
            layer_window=tuple(self.model.layer_window(il) for il in range(hp.n_layer)),
            capture=frozenset(capture),
        )
        return plan, slots

    def _graph_for(self, plan: StepPlan):
        if plan != self._plan:
            self._graph = None  # free the old context before building the new one
            b = Builder(self.model, self.cache, plan)
            self._graph = self.model.build(b)
            self.backend.alloc_graph(self._graph.gf)
            self._plan = plan
            self.graphs_built += 1
        return self._graph

    def step(self, tokens: np.ndarray, positions: np.ndarray, all_logits: bool = False,
             capture=()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run ``tokens`` at ``positions`` through the model, appending them to the cache.
        Returns logits [n_out, n_vocab] and the captured intermediates by name."""
        tokens = np.asarray(tokens, dtype=np.int32)
        positions = np.asarray(positions, dtype=np.int32)
        plan, slots = self.plan(len(tokens), all_logits, capture)
        g = self._graph_for(plan)
        g.set_input("tokens", tokens)
        g.set_input("pos", positions)
        for t, table in enumerate(self.cache.tables):
            if t in set(plan.layer_table):
                g.set_input(f"kv_idx-{t}", slots[t])
        for t, window in plan.mask_keys():
            g.set_input(f"mask-{t}-{window}",
                        self.cache.tables[t].mask(positions, plan.n_kv[t], slots[t], window))
        if plan.n_out < plan.n_tokens:
            g.set_input("out_ids", np.array([plan.n_tokens - 1], dtype=np.int32))
        self.backend.compute(g.gf)
        for table, s in zip(self.cache.tables, slots):
            table.commit(s, positions)
        self.cache.tokens_seen += len(tokens)
        logits = g.read(g.logits).reshape(plan.n_out, -1)
        captured = {name: g.read(g.named[name]) for name in plan.capture}
        return logits, captured

    def invalidate(self) -> None:
        """Forget the cached graph (after the cache buffers or the model changed)."""
        self._plan = None
        self._graph = None

"""One forward step: plan → (reused or new) graph → inputs → compute → logits → eviction.

The last graph stays built and allocated; a step whose :class:`StepPlan` equals the previous
one only refreshes the inputs, as llama.cpp's graph reuse does. In decoding the plan changes only
when the visible cache crosses a multiple of 256 slots. (Only one step graph is kept: a graph
allocated once keeps its tensors' addresses, and ggml would not re-place them after another
graph used the compute buffer.)

An eviction is carried out right after the step that decided it, by a small maintenance graph
on the backend's second scheduler (:meth:`ForwardRunner.flush`): the evicted tokens are folded
into the latent memory, then the kept ones are moved into place. Step graphs therefore never
carry memory writes or moves, and decode steps between evictions do no such work.
"""

from __future__ import annotations

import functools

import numpy as np

from ..ggml_ops.backend import Backend
from ..ggml_ops.graph import Graph
from ..ggml_ops.matmul import MIN_COLUMNS
from ..ggml_ops.structs import GGMLType
from .attention import attention_kernel, step_path
from .cache import KVCache, add_compaction
from .eviction import Evictor
from .memory_write import add_memory_write, memory_write_inputs
from .models.builder import Builder, StepPlan
from .policies.base import LayerObservation


def causal_mask(n_used: int, n_kv: int, n_tokens: int) -> np.ndarray:
    """Mask of a full-attention layer whose slots [0, n_used) hold earlier tokens (all visible)
    and whose next ``n_tokens`` slots receive this step's tokens (visible causally)."""
    s = np.arange(n_kv)[None, :]
    t = np.arange(n_tokens)[:, None]
    visible = (s < n_used) | ((s >= n_used) & (s - n_used <= t))
    return np.where(visible, np.float16(0), np.float16(-np.inf))


class ForwardRunner:
    def __init__(
        self, model, cache: KVCache, backend: Backend, evictor: Evictor | None = None, attention: str = "auto"
    ):
        self.model = model
        self.cache = cache
        self.backend = backend
        self.evictor = evictor
        self.attention = attention  # "auto" (the rule in engine/attention.py) or a path
        self.windows = [model.layer_window(il) for il in range(model.hp.n_layer)]
        self._plan: StepPlan | None = None
        self._graph = None
        self.graphs_built = 0
        self.recall = None  # the recall tier (engine/recall.py), when the engine has one

    # --- planning ----------------------------------------------------------------------
    def _mask_key(self, il: int, n_used: int):
        w = self.windows[il]
        return ("causal", n_used) if w == 0 else ("table", self.cache.layer_table[il], w)

    def plan(self, n_tokens: int, all_logits: bool, capture=()):
        cache, n_layer = self.cache, self.model.hp.n_layer
        for table in cache.tables:
            table.check_room(n_tokens)
        table_used = [t.n_used for t in cache.tables]
        table_n_kv = [t.n_kv(u + n_tokens) for t, u in zip(cache.tables, table_used)]
        n_used = [table_used[t] for t in cache.layer_table]
        mask_keys = [self._mask_key(il, n_used[il]) for il in range(n_layer)]
        mask_ids = {k: i for i, k in enumerate(dict.fromkeys(mask_keys))}
        idx_ids = {u: i for i, u in enumerate(dict.fromkeys(n_used))}
        attn, capture = (0,) * n_layer, set(capture)
        if self.evictor:
            attn = self.evictor.attention_queries(n_tokens)
            if self.evictor.policy.needs_keys:
                capture |= {f"Kcur-{il}" for il in range(n_layer)}
            if self.recall is not None and self.recall.wants_queries(n_tokens):
                capture |= {f"Qcur-{il}" for il in self.recall.layers}
        index, mem_read = self._plan_indexmem()
        plan = StepPlan(
            n_tokens=n_tokens,
            n_out=n_tokens if all_logits else 1,
            layer_n_kv=tuple(table_n_kv[t] for t in cache.layer_table),
            layer_mask=tuple(mask_ids[k] for k in mask_keys),
            layer_idx=tuple(idx_ids[u] for u in n_used),
            layer_attn=attn,
            capture=frozenset(capture),
            layer_index=index,
            layer_mem_read=mem_read,
            index_queries=self.recall is not None,
            attention=step_path(
                self.attention, n_tokens, cache.types, self.model.hp.head_dim, self._on_cpu()
            ),
            index_kernel=any(index) and self._index_kernel,
            weight_kernel=n_tokens >= MIN_COLUMNS and self._weight_kernel,
        )
        return plan, n_used, mask_keys

    def _on_cpu(self) -> bool:
        return self.backend.main == self.backend.cpu

    @functools.cached_property
    def _index_kernel(self) -> bool:
        """Whether the indexer scores with the CPU kernel: a SIMD build, a cache in CPU memory
        (decided at the first step that scores; nothing it reads changes after)."""
        kernel = attention_kernel() if self._on_cpu() else None
        sizes = self.cache.indexmem.modules.sizes
        return bool(
            kernel and kernel.simd and kernel.supports_importance(sizes["d_idx"], sizes["n_idx_heads"])
        )

    @functools.cached_property
    def _weight_kernel(self) -> bool:
        """Whether Q4_1 weight products may run on the CPU kernel (weights in CPU memory). The
        kernel's results equal ggml_mul_mat's, so this changes speed only."""
        kernel = attention_kernel() if self._on_cpu() else None
        return bool(kernel and kernel.supports_mul_mat(GGMLType.Q4_1, 32))

    def _plan_indexmem(self):
        """Which layers score with the indexer, and which read their latent memory (those it
        has been written to: no readout before the first eviction)."""
        state, n_layer = self.cache.indexmem, self.model.hp.n_layer
        if state is None:
            return (), ()
        index = tuple(il in state.keys for il in range(n_layer))
        return index, tuple(il in state.memory_used for il in range(n_layer))

    def _graph_for(self, plan: StepPlan):
        if plan != self._plan or self._graph is None:
            self.invalidate()  # free the old context before building the new one
            self._graph = self.model.build(Builder(self.model, self.cache, plan))
            self.backend.alloc_graph(self._graph.gf)
            self._plan = plan
            self.graphs_built += 1
        return self._graph

    # --- inputs ------------------------------------------------------------------------
    def _set_inputs(self, g, plan, tokens, positions, n_used, mask_keys) -> None:
        n = len(tokens)
        g.set_input("tokens", tokens)
        g.set_input("pos", positions)
        for u, i in {u: plan.layer_idx[il] for il, u in enumerate(n_used)}.items():
            g.set_input(f"kv_idx-{i}", np.arange(u, u + n, dtype=np.int64))
        done = set()
        for il, key in enumerate(mask_keys):
            m = plan.layer_mask[il]
            if m in done:
                continue
            done.add(m)
            n_kv = plan.layer_n_kv[il]
            if key[0] == "causal":
                mask = causal_mask(n_used[il], n_kv, n)
            else:
                table = self.cache.table_of(il)
                mask = table.mask(positions, n_kv, np.arange(n_used[il], n_used[il] + n), key[2])
            g.set_input(f"mask-{m}", mask)
        if plan.n_out < plan.n_tokens:
            g.set_input("out_ids", np.array([plan.n_tokens - 1], dtype=np.int32))

    # --- the step ----------------------------------------------------------------------
    def step(
        self, tokens: np.ndarray, positions: np.ndarray, all_logits: bool = False, capture=(), swaps=True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run ``tokens`` at ``positions`` through the model, appending them to the cache, then
        let the evictor compress. Returns logits [n_out, n_vocab] and captured intermediates."""
        tokens = np.asarray(tokens, dtype=np.int32)
        positions = np.asarray(positions, dtype=np.int32)
        n_used_before = [t.n_used for t in self.cache.tables]
        plan, n_used, mask_keys = self.plan(len(tokens), all_logits, capture)
        g = self._graph_for(plan)
        self._set_inputs(g, plan, tokens, positions, n_used, mask_keys)
        self.backend.compute(g.gf)
        slots = {t: self.cache.tables[t].append(positions) for t in dict.fromkeys(self.cache.layer_table)}
        self.cache.tokens_seen += len(tokens)
        logits = g.read(g.logits).reshape(plan.n_out, -1)
        captured = {name: g.read(g.named[name]) for name in plan.capture}
        if self.evictor:
            self.evictor.after_step(self._observations(g, plan, captured, slots, positions), len(tokens))
            self.flush()
            if self._swapped(positions, n_used_before, swaps):  # run again on the swapped cache, once
                return self.step(tokens, positions, all_logits, capture, swaps=False)
        return logits, {k: v for k, v in captured.items() if k in set(capture)}

    def _swapped(self, positions, n_used_before, allowed: bool) -> bool:
        """Whether the recall tier swapped stored tokens in for this step's queries
        (``recall_at="each_step"``, engine/recall_step.py)."""
        if self.recall is None or not self.recall.swaps_each_step or not self.recall.step_queries:
            return False
        if not allowed:
            self.recall.take_step_queries()
            return False
        from .recall_step import swap_for_step

        return swap_for_step(self, positions, n_used_before)

    def _observations(self, g, plan, captured, slots, positions) -> dict[int, LayerObservation]:
        obs = {}
        hp = self.model.hp
        wants_queries = self.recall is not None and self.recall.wants_queries(plan.n_tokens)
        for il in range(hp.n_layer):
            table = self.cache.table_of(il)
            o = LayerObservation(positions=table.positions[: table.n_used])
            if plan.layer_index and plan.layer_index[il]:
                o.index_scores = (
                    g.view(g.named[f"idx_imp-{il}"]).reshape(-1)[: table.n_used].astype(np.float64)
                )
                if plan.index_queries:
                    sizes = self.cache.indexmem.modules.sizes
                    heads, dim = sizes["n_idx_heads"], sizes["d_idx"]
                    o.index_queries = (
                        g.read(g.named[f"idx_q-{il}"]).reshape(-1, heads, dim),
                        g.read(g.named[f"idx_a-{il}"]).reshape(-1, heads),
                    )
            if plan.layer_attn[il]:
                o.attn_mass = (
                    g.view(g.named[f"attn_mass-{il}"]).reshape(-1)[: table.n_used].astype(np.float64)
                )
            if wants_queries and f"Qcur-{il}" in captured:
                last = min(plan.n_tokens, self.recall.n_queries)
                q = captured[f"Qcur-{il}"].reshape(plan.n_tokens, hp.n_head, hp.head_dim)
                o.queries = (q[-last:], positions[-last:])
            key = f"Kcur-{il}"
            if key in captured:
                o.new_keys = captured[key].reshape(plan.n_tokens, hp.n_head_kv, hp.head_dim)
                o.new_slots = slots[self.cache.layer_table[il]]
            obs[il] = o
        return obs

    def flush(self) -> None:
        """Run the queued memory writes and compaction moves (the step that evicted calls it;
        so does anything that compacts the cache outside a step)."""
        cache, recall = self.cache, self.recall
        if recall is not None:
            recall.store_evicted(cache)  # before the moves overwrite the evicted rows
        if not cache.pending_moves and not cache.pending_evicted:
            self._write_recalled()
            return
        g, inputs = Graph(max_nodes=64 + 48 * cache.n_layer), {}
        for il in cache.pending_evicted:  # expanded first: they read rows the moves overwrite
            add_memory_write(g, self.model, cache, il)
            inputs.update(memory_write_inputs(cache, il, self.model.hp.n_head_kv))
        for il, (src, dst) in cache.pending_moves.items():
            s = g.input(f"src-{il}", GGMLType.I32, len(src))
            d = g.input(f"dst-{il}", GGMLType.I64, len(dst))
            add_compaction(g, cache.layers[il], s, d)
            inputs[f"src-{il}"], inputs[f"dst-{il}"] = src.astype(np.int32), dst
        self.run_once(g, inputs)
        if cache.indexmem is not None:
            cache.indexmem.memory_used |= set(cache.pending_evicted)
        cache.pending_moves = {}
        cache.pending_evicted = {}
        self._write_recalled()

    def _write_recalled(self) -> None:
        if self.recall is not None and self.recall.pending_recall:
            self.recall.write_recalled(self)  # into the slots the moves left free

    def run_once(self, g: Graph, inputs: dict[str, np.ndarray]) -> None:
        """Allocate, fill and compute a one-off graph (cache maintenance) on the maintenance
        scheduler, leaving the step graph in place, then free it."""
        try:
            self.backend.alloc_graph(g.gf, maintenance=True)
            for name, arr in inputs.items():
                g.set_input(name, arr)
            self.backend.compute(g.gf, maintenance=True)
        finally:
            g.close()

    def invalidate(self) -> None:
        """Forget the built graph (after the cache buffers or the model changed)."""
        if self._graph is not None:
            self._graph.close()
        self._graph = None
        self._plan = None

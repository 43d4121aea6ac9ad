"""The recall tier inside the engine (issue 47): evicted tokens go to a store, and at every
compression the indexer's queries since the layer's last compression score the stored tokens
too; those that now outrank cached ones come back into the cache, inside the budget.

The pieces, in the order a step uses them:

- ``observe``: the index queries and head weights of the step (the last ``n_queries`` of them;
  the graph outputs them, ``Builder.index_importance``) join the layer's buffer;
- ``candidates``: at a compression, the buffered queries score every live stored token (blocks
  read from the store, so the cost is linear in its size), the scores are max-pooled over stored
  neighbours by position as the cached ones are, and the best ``per_step`` come forward;
- the evictor ranks cached tokens and candidates together (``Evictor._compress``): the kept
  cached tokens are packed, the recalled ones take the slots after them, the evicted ones are
  queued for the store;
- ``store_evicted`` (before the compaction moves overwrite them) copies the evicted rows into the
  store; ``write_recalled`` (after the moves) writes the recalled rows into their slots and, in
  latent-memory layers, takes them back out of M and b: with lambda = 1 the write was a plain
  sum, so subtracting the same terms is exact (up to float rounding); with lambda != 1 the
  recalled tokens stay counted in the memory (documented, ``exact_memory``).

``at="prompt_end"`` keeps the tier closed for a prompt's chunks before its last (the feeder sets
``open``); ``score="attention"`` then ranks cached and stored tokens at that last chunk by the
attention of the model's own queries (``recall_attention.py``) instead of by the indexer.
``at="each_step"`` recalls nothing at compressions: from a prompt's last token on, each step's
own queries swap stored tokens they attend into the cache and the step runs again
(``recall_step.py``).
"""

from __future__ import annotations

import numpy as np

from ..ggml_ops.bindings import C, tensor_struct
from ..ggml_ops.graph import Graph
from .policies.snapkv import sliding_max
from .recall_attention import key_floats
from .recall_store import RecallStore, runs

PER_STEP = 128  # tokens recalled per layer per compression, at most
N_QUERIES = 64  # the most recent index queries of a layer that score the store
# When stored tokens may come back: at every compression, only at the compression after a
# prompt's last chunk and in decoding (the queries of a question, not of the text before it), or
# at every one-token step from a prompt's last token on, swapped in for that step's queries.
RECALL_AT = ("every_chunk", "prompt_end", "each_step")
# What ranks stored against cached tokens: the indexer's scores, or the model's own attention
# (from the prompt's last queries at its end, engine/recall_attention.py; from each step's
# queries with at="each_step", engine/recall_step.py).
RECALL_SCORES = ("index", "attention")


def check_recall_options(at: str, score: str) -> None:
    """Raise ValueError for a ``recall_at`` / ``recall_score`` pair the tier cannot run."""
    if at not in RECALL_AT or score not in RECALL_SCORES:
        raise ValueError(
            f"recall_at={at!r}, recall_score={score!r}: recall_at is one of {', '.join(RECALL_AT)}, "
            f"recall_score one of {', '.join(RECALL_SCORES)}"
        )
    if score == "attention" and at == "every_chunk":
        raise ValueError(
            "recall_score='attention' ranks at a prompt's end or at each step: "
            "use recall_at='prompt_end' or 'each_step'"
        )
    if at == "each_step" and score != "attention":
        raise ValueError("recall_at='each_step' ranks by the step's attention: use recall_score='attention'")


def store_scores(q: np.ndarray, a: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """max over queries t of sum_j a[t, j] ReLU(q[t, j] . k) for every key: [n_keys].
    q [T, H_idx, d_idx], a [T, H_idx], keys [n_keys, d_idx]."""
    dots = np.einsum("thd,nd->thn", q, keys, optimize=True)
    np.maximum(dots, 0.0, out=dots)
    return np.einsum("th,thn->tn", a, dots, optimize=True).max(axis=0)


def pool_by_position(scores: np.ndarray, positions: np.ndarray, kernel: int) -> np.ndarray:
    if kernel <= 1 or len(scores) == 0:
        return scores
    order = np.argsort(positions, kind="stable")
    out = np.empty_like(scores)
    out[order] = sliding_max(scores[order], kernel)
    return out


class Recall:
    def __init__(
        self,
        store: RecallStore,
        pool_kernel: int = 1,
        per_step: int = PER_STEP,
        n_queries: int = N_QUERIES,
        exact_memory: bool = True,
        at: str = "every_chunk",
        score: str = "index",
        key_format: tuple[int, int, int, float] | None = None,
    ):
        """``key_format``: the cache's K type, KV heads, head size and the factor between
        ``Qcur . Kcur`` and the attention logit (attention scoring reads K rows)."""
        if per_step < 1 or n_queries < 1:
            raise ValueError(f"recall per_step and n_queries must be >= 1 (got {per_step}, {n_queries})")
        check_recall_options(at, score)
        if score == "attention" and key_format is None:
            raise ValueError("recall score='attention' reads K rows: pass key_format")
        self.at, self.score, self.key_format = at, score, key_format
        self.model_queries: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer -> (queries, positions)
        self.step_queries: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the same, at="each_step"
        self.open = True  # the feeder closes it for a prompt's chunks before its last (at="prompt_end")
        self.store, self.pool_kernel = store, pool_kernel
        self.per_step, self.n_queries, self.exact_memory = per_step, n_queries, exact_memory
        self.queries: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.pending_store: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer -> (slots, positions)
        self.pending_recall: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer -> (slots, entries)
        self.recalled = {il: 0 for il in store.layers}  # tokens brought back, per layer

    @property
    def layers(self) -> list[int]:
        return self.store.layers

    # --- scoring -----------------------------------------------------------------------
    def wants_queries(self, n_tokens: int) -> bool:
        """Should this step output the model's queries? At a prompt's last chunk, when the
        stored tokens are ranked by attention at the prompt's end (its last token, fed alone,
        and decoding steps are ranked by the indexer); at every one-token step from a prompt's
        last token on with at="each_step"."""
        if self.score != "attention" or not self.open:
            return False
        return n_tokens == 1 if self.at == "each_step" else n_tokens > 1

    @property
    def swaps_each_step(self) -> bool:
        return self.at == "each_step"

    def observe(self, il: int, obs) -> None:
        queries = self.step_queries if self.swaps_each_step else self.model_queries
        if obs.queries is None:  # the model's queries rank only the step that computed them
            queries.pop(il, None)
        else:
            queries[il] = obs.queries
        if obs.index_queries is not None:
            self._observe_index(il, *obs.index_queries)

    def _observe_index(self, il: int, q: np.ndarray, a: np.ndarray) -> None:
        buf = self.queries.setdefault(il, [])
        buf.append((q[-self.n_queries :], a[-self.n_queries :]))
        while sum(len(x) for x, _ in buf) - len(buf[0][0]) >= self.n_queries:
            buf.pop(0)

    def candidates(self, il: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(store entries, their positions, their pooled scores) of the best ``per_step`` live
        stored tokens for the queries seen since the layer's last compression."""
        buf = self.queries.get(il)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0))
        closed = (self.at == "prompt_end" and not self.open) or self.swaps_each_step
        if not buf or self.store.live(il) == 0 or closed:
            return empty
        q = np.concatenate([x for x, _ in buf])[-self.n_queries :].astype(np.float32)
        a = np.concatenate([w for _, w in buf])[-self.n_queries :].astype(np.float32)
        entries, positions, scores = [], [], []
        for start, pos, keys, taken in self.store.blocks(il):
            live = np.flatnonzero(~taken)
            entries.append(start + live)
            positions.append(pos[live])
            scores.append(store_scores(q, a, keys[live]))
        entries, positions = np.concatenate(entries), np.concatenate(positions)
        pooled = pool_by_position(np.concatenate(scores).astype(np.float64), positions, self.pool_kernel)
        best = np.lexsort((-positions, -pooled))[: self.per_step]  # ties to the more recent
        return entries[best], positions[best], pooled[best]

    def has_queries(self, il: int) -> bool:
        return il in self.model_queries

    def take_step_queries(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The queries of the step just run, per layer (at="each_step"); they are used once."""
        queries, self.step_queries = self.step_queries, {}
        return queries

    def cached_key_rows(self, il: int, cache, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The layer's cached K rows as the cache stores them [n_used, row bytes] and their
        positions (int64); empty slots sit after every query, so attention masks them out."""
        free = np.iinfo(np.int64).max
        cached_pos = np.where(positions >= 0, positions, free).astype(np.int64)
        return _rows(cache.layers[il].k, np.arange(len(positions))), cached_pos

    def cached_keys(self, il: int, cache, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The layer's cached K rows as float32 [n_used, H_kv, d] and their positions (int64)."""
        k_type, n_head_kv, head_dim, _ = self.key_format
        rows, cached_pos = self.cached_key_rows(il, cache, positions)
        cached_k = key_floats(rows, k_type, n_head_kv, head_dim)
        cached_k[positions < 0] = 0.0  # whatever an empty slot holds (it is masked out anyway)
        return cached_k, cached_pos

    def stored_keys(self, il: int):
        """(entries, positions int64, K rows float32 [n, H_kv, d]) of the layer's live stored
        tokens, a block of the store at a time."""
        k_type, n_head_kv, head_dim, _ = self.key_format
        for start, pos, k_rows, taken in self.store.blocks(il, "k"):
            live = np.flatnonzero(~taken)
            yield (
                start + live,
                pos[live].astype(np.int64),
                key_floats(k_rows[live], k_type, n_head_kv, head_dim),
            )

    def attention_scores(self, il: int, cache, positions: np.ndarray):
        """Cached tokens' scores [n_used] and the best ``per_step`` stored candidates (entries,
        positions, scores), all on the attention the step's last queries give them, pooled by
        position over cached and stored tokens together."""
        from .recall_attention import attention_importance

        q, q_pos = self.model_queries.pop(il)
        scale = self.key_format[3]
        cached_k, cached_pos = self.cached_keys(il, cache, positions)

        def blocks():  # read again for each pass, a block at a time
            yield cached_k, cached_pos
            for _, pos, k in self.stored_keys(il):
                yield k, pos

        parts = attention_importance(q, q_pos.astype(np.int64), blocks, scale)
        entries, stored_pos = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for start, pos, _, taken in self.store.blocks(il):
            live = np.flatnonzero(~taken)
            entries.append(start + live)
            stored_pos.append(pos[live].astype(np.int64))
        entries, stored_pos = np.concatenate(entries), np.concatenate(stored_pos)
        all_pos = np.concatenate([cached_pos, stored_pos])
        pooled = pool_by_position(np.concatenate(parts), all_pos, self.pool_kernel)
        n = len(positions)
        cached, stored = pooled[:n], pooled[n:]
        best = np.lexsort((-stored_pos, -stored))[: self.per_step]  # ties to the more recent
        return cached, (entries[best], stored_pos[best].astype(np.int32), stored[best])

    def compressed(self, il: int) -> None:
        self.queries.pop(il, None)
        self.model_queries.pop(il, None)

    # --- moving rows -------------------------------------------------------------------
    def store_evicted(self, cache) -> None:
        """Copy the rows of the tokens evicted since the last flush into the store (before the
        compaction moves overwrite them)."""
        for il, (slots, positions) in self.pending_store.items():
            layer, keys = cache.layers[il], cache.indexmem.keys[il]
            self.store.append(
                il, positions, _columns(keys, slots), _rows(layer.k, slots), _rows(layer.v, slots)
            )
        self.pending_store = {}

    def write_recalled(self, runner) -> None:
        """Put the recalled rows into their slots (after the moves), and take them out of the
        latent memory where that is exact."""
        cache = runner.cache
        unwrite = {}
        for il, (slots, entries) in self.pending_recall.items():
            k_rows, v_rows, keys = self.store.take(il, entries)
            layer = cache.layers[il]
            _set_rows(layer.k, slots, k_rows)
            _set_rows(layer.v, slots, v_rows)
            _set_rows(
                cache.indexmem.keys[il], slots, np.ascontiguousarray(keys, dtype=np.float32).view(np.uint8)
            )
            self.recalled[il] += len(slots)
            if il in cache.record_evicted and il in cache.indexmem.memory_used and self.exact_memory:
                unwrite[il] = (slots, cache.table_of(il).positions[slots].copy())
        self.pending_recall = {}
        if unwrite:
            _unwrite_memory(runner, unwrite)

    def clear(self) -> None:
        self.store.clear()
        self.queries, self.pending_store, self.pending_recall = {}, {}, {}
        self.model_queries, self.step_queries = {}, {}

    def close(self) -> None:
        self.store.close()


def _rows(tensor, slots: np.ndarray) -> np.ndarray:
    """Raw bytes of rows ``slots`` of a [width, capacity] cache tensor: [n, row bytes] (one copy
    per run of consecutive slots)."""
    row = tensor_struct(tensor).nb[1]
    out = np.empty((len(slots), row), dtype=np.uint8)
    for where, first, n in runs(slots):
        run = np.empty((n, row), dtype=np.uint8)
        C.ggml_backend_tensor_get(tensor, run.ctypes.data, first * row, n * row)
        out[where] = run
    return out


def _columns(tensor, slots: np.ndarray) -> np.ndarray:
    """Float32 rows (per slot) of an index-key tensor [d_idx, capacity]: [n, d_idx]."""
    raw = _rows(tensor, slots)
    return raw.view(np.float32).reshape(len(slots), -1)


def _set_rows(tensor, slots: np.ndarray, data: np.ndarray) -> None:
    """Write raw rows ``data`` [n, row bytes] into rows ``slots`` of a cache tensor."""
    row = tensor_struct(tensor).nb[1]
    data = np.asarray(data, dtype=np.uint8).reshape(len(slots), -1)
    if data.shape[1] != row:
        raise ValueError(f"a stored row of {data.shape[1]} bytes does not fit a cache row of {row}")
    for where, first, n in runs(slots):
        run = np.ascontiguousarray(data[where])
        C.ggml_backend_tensor_set(tensor, run.ctypes.data, first * row, n * row)


def _unwrite_memory(runner, rows: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """M -= eta sum phi(k) v^T, b -= eta sum phi(k)^2 over the recalled tokens (decay 1)."""
    from .memory_write import add_memory_write, memory_write_inputs

    cache = runner.cache
    g, inputs = Graph(max_nodes=64 + 48 * len(rows)), {}
    for il, (slots, positions) in rows.items():
        add_memory_write(g, runner.model, cache, il, len(slots))
        inputs.update(memory_write_inputs(cache, il, runner.model.hp.n_head_kv, slots, positions, sign=-1.0))
    runner.run_once(g, inputs)

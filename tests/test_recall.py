"""The recall tier (issue 47): the store, its scoring against the training modules, and the
engine with it: nothing lost or duplicated between cache and store, the budget kept, recalled
tokens taken back out of the latent memory exactly, RAM and disk stores alike, sessions and
stats honest about it, and no change at all without it."""

import copy

import numpy as np
import pytest
import torch
from indexmem import Engine
from indexmem.engine.recall import _rows, pool_by_position, store_scores
from indexmem.engine.recall_store import RecallStore
from indexmem.engine.session import SessionError
from indexmem.ggml_ops.bindings import C
from indexmem.train.modules import Indexer, IndexMemSizes
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)
from tiny_models import random_prompt

B, SINKS, TAU, N_BATCH = 24, 2, 4, 8


@pytest.mark.parametrize("where", ["disk", "ram"])
def test_the_store_keeps_rows_blocks_and_takes_them_back(where, monkeypatch):
    import indexmem.engine.recall_store as rs

    monkeypatch.setattr(rs, "BLOCK", 3)  # several blocks from a few entries
    store = RecallStore([0, 5], d_idx=4, row_bytes=(6, 10), where=where)
    rng = np.random.default_rng(0)
    pos = np.arange(10, 17, dtype=np.int32)
    keys = rng.standard_normal((7, 4)).astype(np.float32)
    k, v = rng.integers(0, 255, (7, 6), dtype=np.uint8), rng.integers(0, 255, (7, 10), dtype=np.uint8)
    store.append(5, pos[:4], keys[:4], k[:4], v[:4])
    store.append(5, pos[4:], keys[4:], k[4:], v[4:])
    blocks = list(store.blocks(5))
    assert [b[0] for b in blocks] == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), pos)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in blocks]), keys)
    asked = [5, 1, 2, 6]  # out of order, with runs of consecutive entries (1-2, 5-6): one read each
    tk, tv, tkeys = store.take(5, np.array(asked))
    np.testing.assert_array_equal(tk, k[asked])
    np.testing.assert_array_equal(tv, v[asked])
    np.testing.assert_array_equal(tkeys, keys[asked])
    assert store.live(5) == 3 and store.live(0) == 0
    np.testing.assert_array_equal(store.taken[5], [i in asked for i in range(7)])
    with pytest.raises(IndexError):
        store.take(5, np.array([7]))
    # flags grow by doubling past their first allocation and keep what was taken
    many = 1500
    store.append(0, np.arange(many, dtype=np.int32), np.zeros((many, 4), np.float32),
                 np.zeros((many, 6), np.uint8), np.zeros((many, 10), np.uint8))  # fmt: skip
    store.take(0, np.array([0, many - 1]))
    store.append(0, pos[:1], keys[:1], k[:1], v[:1])
    assert store.live(0) == many - 1 and store.taken[0][[0, many - 1, many]].tolist() == [True, True, False]
    store.take(0, np.array([many]))
    np.testing.assert_array_equal(store.take(0, np.array([], dtype=np.int64))[0], np.zeros((0, 6), np.uint8))
    assert store.live(0) == many - 2
    assert store.nbytes == (7 + many + 1) * (4 + 16 + 6 + 10)
    assert (store.disk_bytes, store.ram_bytes) == (
        (store.nbytes, 0) if where == "disk" else (0, store.nbytes)
    )
    folder = store.folder
    store.clear()
    assert store.live(5) == 0 and not list(store.blocks(5))
    store.close()
    assert folder is None or not __import__("os").path.exists(folder)


def test_store_scores_are_the_indexers_max_over_queries():
    sizes = IndexMemSizes(d_model=16, n_head=2, d_head=8, n_idx_heads=3, d_idx=4, d_mem=4)
    torch.manual_seed(0)
    indexer = Indexer(sizes)
    x, q_pre = torch.randn(9, 16), torch.randn(9, 2, 8)
    with torch.no_grad():
        q, a = indexer.queries(x[-5:], q_pre[-5:])
        keys = indexer.keys(x)
        ref = Indexer.scores(q, a, keys).amax(0).numpy()
    ours = store_scores(q.numpy(), a.numpy(), keys.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    scores, positions = np.array([1.0, 5.0, 2.0, 0.0]), np.array([30, 10, 20, 40])
    # position order 10, 20, 30, 40 holds 5, 2, 1, 0: a width-3 pool gives 5, 5, 2, 1
    np.testing.assert_array_equal(pool_by_position(scores, positions, 3), [2.0, 5.0, 5.0, 1.0])


def _load(base, side, recall, memory=True, **kw):
    return Engine.load(
        str(base), n_ctx=4096, policy="indexmem", indexmem=str(side), memory=memory, budget=B,
        sinks=SINKS, window=4, tau=TAU, n_batch=N_BATCH, recall=recall, **kw,
    )  # fmt: skip


def _feed(engine, tokens):
    logits = []
    for i in range(0, len(tokens), N_BATCH):
        start = engine.cache.tokens_seen
        out, _ = engine.runner.step(np.array(tokens[i : i + N_BATCH]), np.arange(start, start + N_BATCH))
        logits.append(out)
    return np.concatenate(logits)


def _cached(engine, il):
    t = engine.cache.table_of(il)
    return t.positions[: t.n_used][t.positions[: t.n_used] >= 0]


def _stored(engine, il):
    store = engine.recall.store
    return np.concatenate([pos[~taken] for _, pos, _, taken in store.blocks(il)] or [np.zeros(0, int)])


def _memory_state(engine, il):
    state = engine.cache.indexmem
    out = []
    for t in (state.mem_m[il], state.mem_b[il]):
        arr = np.empty(C.ggml_nbytes(t) // 4, dtype=np.float32)
        C.ggml_backend_tensor_get(t, arr.ctypes.data, 0, arr.nbytes)
        out.append(arr)
    return out


@pytest.mark.parametrize("cache_types", [("f16", "f16"), ("f32", "bf16")])
def test_cache_and_store_hold_every_token_once_within_the_budget(setup, cache_types):
    """Also with K and V of other types than each other (their stored rows differ in size)."""
    base, side, _ = setup
    engine = _load(base, side, "disk", cache_type_k=cache_types[0], cache_type_v=cache_types[1])
    tokens = random_prompt(160, seed=5)
    for i in range(0, len(tokens), N_BATCH):
        _feed(engine, tokens[i : i + N_BATCH])
        engine.runner.flush()
        for il in engine.recall.layers:
            cached, stored = _cached(engine, il), _stored(engine, il)
            assert len(cached) <= B
            assert sorted(np.concatenate([cached, stored]).tolist()) == list(range(i + N_BATCH))
    assert sum(engine.recall.recalled.values()) > 0, "the random indexer never brought a token back"
    stats = engine.stats()
    assert stats["recall_store_tokens"] == sum(len(_stored(engine, il)) for il in engine.recall.layers)
    assert stats["recall_store_bytes"] == engine.recall.store.nbytes > 0
    assert stats["ram_bytes"] == stats["kv_bytes"] + stats["index_bytes"] + stats["memory_bytes"]
    assert stats["tokens_recalled"] == engine.recall.recalled
    engine.close()


@pytest.mark.parametrize("cache_types", [("f16", "f16"), ("f32", "bf16")])
def test_every_cached_row_is_the_one_first_written_for_its_token(setup, cache_types):
    """After recalls, each slot's K, V and index key are the bytes the cache held for that
    token when it was first written (recalled rows come back from the store unchanged)."""
    base, side, _ = setup
    engine = _load(base, side, "ram", cache_type_k=cache_types[0], cache_type_v=cache_types[1])
    cache, first = engine.cache, {}
    for i, token in enumerate(random_prompt(160, seed=9)):
        engine.runner.step(np.array([token]), np.array([i]))  # the recent window keeps it
        engine.runner.flush()
        for il in engine.recall.layers:
            table = cache.table_of(il)
            slots = np.arange(table.n_used)
            now = [_rows(t, slots) for t in (cache.layers[il].k, cache.layers[il].v, cache.indexmem.keys[il])]
            (new,) = np.flatnonzero(table.positions[slots] == i)
            first[il, i] = [rows[new] for rows in now]
            for s in slots:
                assert all(np.array_equal(a[s], b) for a, b in zip(now, first[il, int(table.positions[s])]))
    assert sum(engine.recall.recalled.values()) > 0, "nothing came back: the check above saw no recall"
    engine.close()


def _assert_memory_holds_the_store(engine, modules):
    """The memory holds exactly the tokens in the store: the same state as writing the store's
    live tokens alone (the torch module, from the K/V rows as the cache held them)."""
    hp, store = engine.hparams, engine.recall.store
    for il in engine.recall.layers:
        entries = np.flatnonzero(~store.taken[il])
        positions = np.concatenate([pos for _, pos, _, _ in store.blocks(il)])[entries]
        k_rows, v_rows, _ = store.take(il, entries)
        k = torch.from_numpy(k_rows.view(np.float16).astype(np.float32)).view(-1, hp.n_head_kv, hp.head_dim)
        v = torch.from_numpy(v_rows.view(np.float16).astype(np.float32)).view(-1, hp.n_head_kv, hp.head_dim)
        from indexmem.train.student.blocks import rope

        k_pre = rope(k, torch.from_numpy(-positions.astype(np.int64)), hp.n_rot, hp.rope_base, 1.0, False)
        group = hp.n_head // hp.n_head_kv
        memory = copy.deepcopy(modules.memories[il])
        with torch.no_grad():
            m, b = memory.write(
                memory.empty_state(),
                k_pre.repeat_interleave(group, 1).reshape(-1, hp.head_dim),
                v.repeat_interleave(group, 1).reshape(-1, hp.head_dim),
            )
        ours_m, ours_b = _memory_state(engine, il)
        scale = float(m.abs().max())
        np.testing.assert_allclose(ours_m, m.T.reshape(-1).numpy(), atol=2e-3 * scale)
        np.testing.assert_allclose(ours_b, b.numpy(), rtol=2e-3, atol=2e-3 * float(b.abs().max()))


def test_recalled_tokens_leave_the_latent_memory_exactly(setup):
    base, side, modules = setup
    engine = _load(base, side, "ram")
    _feed(engine, random_prompt(200, seed=6))
    engine.runner.flush()
    assert sum(engine.recall.recalled.values()) > 0
    _assert_memory_holds_the_store(engine, modules)
    engine.close()


def test_disk_and_ram_stores_give_the_same_logits_and_recall_none_changes_nothing(setup):
    base, side, _ = setup
    tokens = random_prompt(120, seed=7)
    disk, ram = _load(base, side, "disk"), _load(base, side, "ram")
    np.testing.assert_array_equal(_feed(disk, tokens), _feed(ram, tokens))
    assert disk.recall.recalled == ram.recall.recalled
    # before anything is evicted the tier is idle: the first chunks equal the engine without it
    plain, again = _load(base, side, None), _load(base, side, "disk")
    np.testing.assert_array_equal(_feed(plain, tokens[:B]), _feed(again, tokens[:B]))
    assert plain.recall is None and plain.stats()["recall"] is None
    folder = disk.recall.store.folder
    disk.close()
    assert not __import__("os").path.exists(folder)


def test_the_last_prompt_token_sees_what_the_chunk_before_it_brought_back(setup):
    base, side, _ = setup
    engine = _load(base, side, "disk")
    steps = []
    original = engine.runner.step

    def step(tokens, positions, **kw):
        steps.append(len(tokens))
        return original(tokens, positions, **kw)

    engine.runner.step = step
    engine.generate(random_prompt(49, seed=8), max_tokens=1)
    assert steps == [8] * 6 + [1]  # 48 prompt tokens in chunks, then the last one alone


def test_sessions_refuse_a_filled_store_and_loading_empties_it(setup, tmp_path):
    base, side, _ = setup
    engine = _load(base, side, "disk")
    engine.generate(random_prompt(12, seed=9), max_tokens=2)  # nothing evicted yet
    engine.save_session(tmp_path / "early.session")
    engine.generate(random_prompt(120, seed=9), max_tokens=2)
    assert engine.stats()["recall_store_tokens"] > 0
    with pytest.raises(SessionError, match="recall"):
        engine.save_session(tmp_path / "late.session")
    assert not (tmp_path / "late.session").exists()
    engine.load_session(tmp_path / "early.session")
    assert engine.stats()["recall_store_tokens"] == 0


def test_recall_needs_the_indexmem_policy(setup):
    base, side, _ = setup
    with pytest.raises(ValueError, match="recall"):
        Engine.load(str(base), n_ctx=512, policy="snapkv", budget=B, recall="disk")
    with pytest.raises(ValueError, match="recall"):
        _load(base, side, "cloud")


def test_recall_per_step_bounds_the_tokens_brought_back_at_a_compression(setup):
    base, side, _ = setup
    tokens = random_prompt(160, seed=5)

    def most_per_step(engine):
        most, before = 0, dict(engine.recall.recalled)
        for i in range(0, len(tokens), N_BATCH):
            _feed(engine, tokens[i : i + N_BATCH])  # one compression per chunk at most
            engine.runner.flush()
            now = dict(engine.recall.recalled)
            most = max([most] + [now[il] - before[il] for il in now])
            before = now
        engine.close()
        return most

    assert most_per_step(_load(base, side, "disk")) > 1, "the limit below would not bind"
    limited = _load(base, side, "disk", recall_per_step=1)
    assert limited.recall.per_step == 1 and limited.stats()["recall_per_step"] == 1
    assert most_per_step(limited) == 1
    with pytest.raises(ValueError, match="recall_per_step"):
        _load(base, side, "disk", recall_per_step=0)
    with pytest.raises(ValueError, match="recall_per_step"):
        _load(base, side, None, recall_per_step=8)


def test_recall_at_prompt_end_brings_tokens_back_only_after_the_last_chunk_and_in_decoding(setup):
    base, side, _ = setup
    prompt = random_prompt(121, seed=10)

    def recalled_per_step(engine):
        """Tokens brought back by each step of a generation, and the chunk sizes."""
        seen, original = [], engine.runner.step

        def step(tokens, positions, **kw):
            before = sum(engine.recall.recalled.values())
            out = original(tokens, positions, **kw)
            engine.runner.flush()
            seen.append((len(tokens), sum(engine.recall.recalled.values()) - before))
            return out

        engine.runner.step = step
        engine.generate(prompt, max_tokens=3 * TAU)
        engine.close()
        return seen

    every = recalled_per_step(_load(base, side, "disk"))
    at_end = recalled_per_step(_load(base, side, "disk", recall_at="prompt_end"))
    n_chunks = 120 // N_BATCH
    assert [n for n, _ in at_end] == [N_BATCH] * n_chunks + [1] * (len(at_end) - n_chunks)
    assert sum(r for _, r in every[: n_chunks - 1]) > 0, "the test would not see a closed tier"
    assert all(r == 0 for _, r in at_end[: n_chunks - 1])  # every chunk before the prompt's last
    assert sum(r for _, r in at_end[n_chunks - 1 :]) > 0  # its last chunk and the decoding steps
    with pytest.raises(ValueError, match="recall_at="):
        _load(base, side, "disk", recall_at="sometimes")
    with pytest.raises(ValueError, match="prompt_end"):
        _load(base, side, "disk", recall_score="attention")
    with pytest.raises(ValueError, match="need recall"):
        _load(base, side, None, recall_at="prompt_end")


def _reference_importance(q, q_pos, k, k_pos):
    """Sum over queries of softmax(q . k / sqrt(d)) over all keys, max over heads (torch, f64)."""
    q, k = torch.from_numpy(q).double(), torch.from_numpy(k).double()
    group = q.shape[1] // k.shape[1]
    logits = torch.einsum("thd,nhd->thn", q, k.repeat_interleave(group, 1)) / q.shape[-1] ** 0.5
    future = torch.from_numpy(k_pos[None, :] > q_pos[:, None])
    logits = logits.masked_fill(future[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).sum(0).amax(0).numpy()


def test_attention_importance_is_one_softmax_over_every_block():
    from indexmem.engine.recall_attention import attention_importance

    rng = np.random.default_rng(0)
    q, q_pos = rng.normal(size=(5, 6, 8)).astype(np.float32), np.arange(95, 100)
    k, k_pos = rng.normal(size=(100, 2, 8)).astype(np.float32), rng.permutation(100)
    cuts = [0, 7, 7, 60, 100]  # an empty block too

    def blocks():
        for a, b in zip(cuts, cuts[1:]):
            yield k[a:b], k_pos[a:b]

    ours = np.concatenate(attention_importance(q, q_pos, blocks))
    ref = _reference_importance(q, q_pos, k, k_pos)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert (ours[k_pos > 99] == 0).all() and ours[k_pos == 99][0] > 0


@pytest.fixture(scope="module")
def wide_heads(tmp_path_factory):
    """A tiny llama with 32-wide heads: quantized K rows need whole 32-value blocks."""
    from tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("hd32")
    return write_tiny_model(root / "hd32.gguf", "llama", seed=7, all_f32=True, head_dim=32, n_ctx_train=4096)


@pytest.mark.parametrize("cache_type", ["f16", "bf16", "q8_0", "q4_0"])
def test_key_floats_reads_cached_keys_of_every_type(wide_heads, cache_type):
    """K rows read from the cache and converted in numpy are the keys the model computed, up to
    the cache type's rounding."""
    from indexmem.engine.recall import _rows
    from indexmem.engine.recall_attention import key_floats

    engine = Engine.load(str(wide_heads), n_ctx=256, policy="full", indexmem=False, cache_type_k=cache_type)
    hp, tokens = engine.hparams, random_prompt(N_BATCH, seed=11)
    _, cap = engine.runner.step(np.array(tokens), np.arange(N_BATCH), capture=["Kcur-1"])
    k_ref = cap["Kcur-1"].reshape(N_BATCH, hp.n_head_kv, hp.head_dim)
    layer = engine.cache.layers[1]
    ours = key_floats(
        _rows(layer.k, np.arange(N_BATCH)), engine.cache_types.ggml_k, hp.n_head_kv, hp.head_dim
    )
    scale = float(np.abs(k_ref).max())
    tol = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2, "q4_0": 0.15}[cache_type]
    np.testing.assert_allclose(ours, k_ref, atol=tol * scale)
    engine.close()


def test_attention_recall_keeps_what_the_prompts_last_queries_attend_to(setup):
    """At the compression after the prompt's last chunk, the kept set is the sinks, the recent
    window and the tokens the reference attention (from the keys and queries the model computed,
    over every token of the prompt) ranks highest; earlier chunks and decoding are unchanged."""
    base, side, _ = setup
    engine = _load(base, side, "disk", recall_at="prompt_end", recall_score="attention", recall_per_step=B)
    hp = engine.hparams
    n_chunks, il = 6, 1
    tokens = random_prompt(n_chunks * N_BATCH, seed=12)
    keys, kept = [], None
    for c in range(n_chunks):
        start = c * N_BATCH
        engine.recall.open = c == n_chunks - 1
        names = [f"Kcur-{il}"] + ([f"Qcur-{il}"] if c == n_chunks - 1 else [])
        _, cap = engine.runner.step(
            np.array(tokens[start : start + N_BATCH]), np.arange(start, start + N_BATCH), capture=names
        )
        keys.append(cap[f"Kcur-{il}"].reshape(N_BATCH, hp.n_head_kv, hp.head_dim))
        kept = _cached(engine, il)
        assert len(kept) <= B
    q = cap[f"Qcur-{il}"].reshape(N_BATCH, hp.n_head, hp.head_dim)
    n = n_chunks * N_BATCH
    ref = _reference_importance(q, np.arange(n - N_BATCH, n), np.concatenate(keys), np.arange(n))
    protected = set(range(SINKS)) | set(range(n - 4, n))  # window=4 in _load
    rest = [p for p in np.argsort(-ref, kind="stable") if p not in protected]
    want = protected | set(rest[: B - len(protected)])
    boundary = ref[rest[B - len(protected) - 1]]
    differ = set(kept.tolist()) ^ want
    assert all(abs(ref[p] - boundary) <= 0.02 * boundary for p in differ), (sorted(differ), boundary)
    assert sum(engine.recall.recalled.values()) > 0
    engine.close()


def test_choose_swaps_pairs_the_most_attended_stored_with_the_least_attended_cached():
    from indexmem.engine.recall_step import choose_swaps

    cached = np.array([0.30, 0.001, 0.02, 0.004, 0.5, 0.003])
    protected = np.array([True, False, False, False, True, True])  # slot 5: attended least, kept
    stored = np.array([0.01, 0.2, 0.06, 0.03, 0.09])
    out, back = choose_swaps(cached, protected, stored, per_step=8, threshold=0.05)
    assert back.tolist() == [1, 4, 2]  # above the threshold, most attended first
    assert out.tolist() == [1, 3, 2]  # the unprotected cached ones, least attended first
    out, back = choose_swaps(cached, protected, stored, per_step=2, threshold=0.05)
    assert (out.tolist(), back.tolist()) == ([1, 3], [1, 4])
    # a stored token only comes back in place of a cached one it outranks
    out, back = choose_swaps(np.array([0.07, 0.08]), np.array([False, False]), stored, 8, 0.05)
    assert (out.tolist(), back.tolist()) == ([0, 1], [1, 4])
    out, back = choose_swaps(cached, protected, np.array([0.04, 0.05]), 8, 0.05)
    assert len(out) == len(back) == 0


def test_each_step_swaps_in_what_the_steps_own_attention_wants(setup):
    """One decoding step: the cached set afterwards is the one the reference attention (the
    step's first query over every key the model computed, cached or evicted) chooses by the
    rule, and the step ran again on it."""
    base, side, _ = setup
    engine = _load(
        base, side, "ram", memory=False, recall_at="each_step", recall_score="attention",
        recall_per_step=B, cache_type_k="f32", cache_type_v="f32",
    )  # fmt: skip
    hp, il = engine.hparams, 1
    seen, first_key = [], []
    take = engine.recall.take_step_queries

    def take_and_keep():  # the step's queries, and its token's key as its first run wrote it
        table = engine.cache.table_of(il)
        if not first_key:
            slot = np.flatnonzero(table.positions[: table.n_used] == n)
            first_key.append(_rows(engine.cache.layers[il].k, slot).view(np.float32))
        seen.append(take())
        return seen[-1]

    engine.recall.take_step_queries = take_and_keep
    tokens = random_prompt(6 * N_BATCH + 1, seed=13)
    n = 6 * N_BATCH
    keys = []
    engine.recall.open = False
    for start in range(0, n, N_BATCH):
        _, cap = engine.runner.step(
            np.array(tokens[start : start + N_BATCH]),
            np.arange(start, start + N_BATCH),
            capture=[f"Kcur-{il}"],
        )
        keys.append(cap[f"Kcur-{il}"].reshape(N_BATCH, hp.n_head_kv, hp.head_dim))
    before = set(_cached(engine, il).tolist())
    engine.recall.open = True
    graphs = engine.runner.graphs_built
    engine.runner.step(np.array(tokens[n:]), np.array([n]))
    keys.append(first_key[0].reshape(1, hp.n_head_kv, hp.head_dim))
    q, q_pos = seen[0][il]
    assert len(seen) == 2 and seen[1] != {}  # the step ran twice; its second queries swap nothing
    ref = _reference_importance(q, q_pos, np.concatenate(keys), np.arange(n + 1))
    from indexmem.engine.recall_step import STEP_THRESHOLD

    stored = [p for p in range(n) if p not in before]
    protected = set(range(SINKS)) | set(range(n + 1 - 4, n + 1))  # window=4 in _load
    weak = sorted((p for p in before if p not in protected), key=lambda p: ref[p])
    wanted = sorted((p for p in stored if ref[p] > STEP_THRESHOLD), key=lambda p: -ref[p])
    k = 0
    while k < min(len(wanted), len(weak)) and ref[wanted[k]] > ref[weak[k]]:
        k += 1
    assert k > 0, "the reference wants no swap: the test checks nothing"
    want = (before | {n}) - set(weak[:k]) | set(wanted[:k])
    assert set(_cached(engine, il).tolist()) == want
    assert engine.recall.recalled[il] == k
    assert engine.runner.graphs_built - graphs <= 1  # the second run reused the step's graph
    engine.close()


def test_each_step_keeps_the_budget_every_token_once_and_the_memory_exact(setup):
    """Over a prompt and forty decoding steps with swaps: every layer holds as many tokens as
    without recall, cache and store hold each token once, and the latent memory holds exactly
    the store's tokens."""
    base, side, modules = setup
    plain = _load(base, side, None)
    engine = _load(base, side, "disk", recall_at="each_step", recall_score="attention")
    tokens = random_prompt(120, seed=14)
    for e in (plain, engine):
        _feed(e, tokens[:80])
    for i in range(80, 120):
        for e in (plain, engine):
            e.runner.step(np.array(tokens[i : i + 1]), np.array([i]))
        assert [t.n_used for t in engine.cache.tables] == [t.n_used for t in plain.cache.tables]
        for il in engine.recall.layers:
            both = np.concatenate([_cached(engine, il), _stored(engine, il)])
            assert sorted(both.tolist()) == list(range(i + 1))
    assert sum(engine.recall.recalled.values()) > 0, "no swap happened: the checks above saw none"
    _assert_memory_holds_the_store(engine, modules)
    with pytest.raises(ValueError, match="each_step"):
        _load(base, side, "disk", recall_at="each_step")
    plain.close()
    engine.close()


@pytest.mark.parametrize("with_kernel", [False, True], ids=["numpy", "kernel"])
def test_one_query_probabilities_are_one_softmax_over_every_block(with_kernel):
    from indexmem.engine.attention import attention_kernel
    from indexmem.engine.recall_step import one_query_probabilities, query_logits
    from indexmem.ggml_ops.structs import GGMLType

    kernel = attention_kernel() if with_kernel else None
    if with_kernel and kernel is None:
        pytest.skip("no C compiler for the CPU kernel")
    rng = np.random.default_rng(1)
    q = rng.normal(size=(6, 16)).astype(np.float32)
    k, k_pos = rng.normal(size=(100, 2, 16)).astype(np.float32), rng.permutation(100)
    hidden = rng.random(100) < 0.2  # entries taken out of the store
    rows = k.reshape(100, -1).view(np.uint8)
    key_format = (GGMLType.F32, 2, 16, 1 / 4)
    cuts = [0, 7, 7, 60, 100]  # an empty block too
    blocks = [
        (query_logits(q, rows[a:b], key_format, kernel), k_pos[a:b], hidden[a:b] if a else None)
        for a, b in zip(cuts, cuts[1:])
    ]
    ours = np.concatenate(one_query_probabilities(blocks, 90))
    shown = ~hidden
    shown[:7] = True  # the first block hides nothing
    ref = _reference_importance(q[None], np.array([90]), k[shown], k_pos[shown])
    np.testing.assert_allclose(ours[shown], ref, rtol=1e-5, atol=1e-7)
    assert (ours[~shown] == 0).all() and (ours[k_pos > 90] == 0).all()
    assert ours[shown & (k_pos <= 90)].min() > 0


def test_query_logits_of_the_kernel_match_numpy_for_every_cache_type():
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    from indexmem.engine.attention import attention_kernel
    from indexmem.engine.recall_step import query_logits
    from indexmem.ggml_ops.structs import GGMLType

    kernel = attention_kernel()
    if kernel is None:
        pytest.skip("no C compiler for the CPU kernel")
    rng = np.random.default_rng(2)
    n_head_kv, head_dim, n = 3, 64, 300
    q = rng.normal(size=(9, head_dim)).astype(np.float32)
    x = rng.normal(size=(n, n_head_kv * head_dim)).astype(np.float32)
    for ggml_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0):
        rows = quantize(x, GGMLQuantizationType(int(ggml_type))).reshape(n, -1).view(np.uint8)
        key_format = (ggml_type, n_head_kv, head_dim, 0.125)
        ours = query_logits(q, rows, key_format, kernel)
        ref = query_logits(q, rows, key_format, None)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=str(ggml_type))
    with pytest.raises(ValueError, match="not a shape"):
        kernel.query_logits(int(GGMLType.F16), rows, n_head_kv, q, 0.125)  # q4_0-sized rows as f16
    with pytest.raises(ValueError, match="not a shape"):
        kernel.query_logits(int(GGMLType.F16), np.zeros((2, 10), np.uint8), 2, q[:7], 0.125)

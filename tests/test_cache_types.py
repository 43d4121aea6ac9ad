"""Quantized and other K/V cache types: refused early when they cannot run; otherwise every part of
the engine that touches the cache keeps working (writes, compaction, the memory write, the context
shift, the heuristics' attention mass, sessions, the bytes reported).

The model here is a tiny f32 llama with 32-wide heads (quantized blocks hold 32 values)."""

import numpy as np
import pytest
from indexmem import Engine
from indexmem.convert.writer import convert
from indexmem.engine.cache import KVCache, add_compaction
from indexmem.engine.cache_types import CACHE_TYPES, CacheTypes, parse_cache_types
from indexmem.engine.context_shift import shift_positions
from indexmem.engine.session import SessionError
from indexmem.errors import UnsupportedCacheTypeError
from indexmem.ggml_ops.backend import Backend
from indexmem.ggml_ops.bindings import C
from indexmem.ggml_ops.graph import Graph
from indexmem.ggml_ops.structs import GGMLType
from indexmem.train.modules import IndexMemSizes
from test_indexmem import random_modules, write_checkpoint
from tiny_models import random_prompt, write_tiny_model

QUANTIZED = ["q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_types")
    base = write_tiny_model(
        root / "llama32.gguf", "llama", seed=7, all_f32=True, head_dim=32, n_ctx_train=4096
    )
    sizes = IndexMemSizes(d_model=64, n_head=4, d_head=32, n_idx_heads=2, d_idx=8, d_mem=16)
    side = convert(
        write_checkpoint(random_modules(2, sizes, seed=1), "llama", root / "ckpt"),
        base,
        root / "side.gguf",
        dtype="f32",
    )
    return base, side


def _bounded(base, side=None, types="f16", **kw):
    opts = dict(policy="indexmem", indexmem=str(side), memory=True) if side else dict(policy="snapkv")
    return Engine.load(
        str(base),
        n_ctx=512,
        budget=40,
        window=8,
        tau=4,
        n_batch=16,
        cache_type_k=types,
        cache_type_v=types,
        **opts,
        **kw,
    )


# --- refusals ---------------------------------------------------------------------------------
def test_unknown_names_are_refused_before_the_model_is_read(tmp_path):
    with pytest.raises(UnsupportedCacheTypeError, match="q3_k"):
        Engine.load(str(tmp_path / "missing.gguf"), cache_type_k="q3_K")
    with pytest.raises(UnsupportedCacheTypeError, match="V cache type"):
        parse_cache_types("f16", "int8")
    assert parse_cache_types(None, "Q8_0") == CacheTypes("f16", "q8_0")


def test_types_the_model_cannot_hold_are_refused_before_any_allocation(tmp_path, monkeypatch):
    narrow = write_tiny_model(tmp_path / "hd16.gguf", "llama", seed=1)  # 16-wide heads
    allocated = []
    monkeypatch.setattr(Backend, "__init__", lambda *a, **k: allocated.append("backend"))
    monkeypatch.setattr(KVCache, "__init__", lambda *a, **k: allocated.append("cache"))
    with pytest.raises(UnsupportedCacheTypeError, match="blocks of 32 values.*heads have 16"):
        Engine.load(str(narrow), cache_type_v="q8_0")
    assert not allocated


def test_the_kernel_path_refuses_types_it_does_not_read(model):
    base, _ = model
    with pytest.raises(UnsupportedCacheTypeError, match="q5_1"):
        Engine.load(str(base), cache_type_k="q5_1", attention="kernel")
    with pytest.raises(ValueError, match="attention must be one of"):
        Engine.load(str(base), attention="fast")


# --- what stays exact -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CACHE_TYPES))
def test_compaction_moves_rows_bit_for_bit(name):
    """get_rows dequantizes, set_rows requantizes: for every accepted type the moved rows keep
    their bytes (a quantized block rebuilt from its own values is the same block)."""
    backend = Backend("cpu", n_threads=1)
    cache = KVCache(backend, 1, 64, 256, CacheTypes(name, name))
    layer, rows = cache.layers[0], 200
    g = Graph(16)
    idx, src = g.input("idx", GGMLType.I64, rows), g.input("src", GGMLType.F32, 64, rows)
    for t in (layer.k, layer.v):
        g.expand(C.ggml_set_rows(g.ctx, t, src, idx))
    backend.alloc_graph(g.gf, maintenance=True)
    g.set_input("idx", np.arange(rows, dtype=np.int64))
    rng = np.random.default_rng(3)
    g.set_input(
        "src", (rng.standard_normal((rows, 64)) * rng.uniform(1e-3, 30, (rows, 1))).astype(np.float32)
    )
    backend.compute(g.gf, maintenance=True)
    g.close()

    def raw(t):
        out = np.empty(C.ggml_nbytes(t), dtype=np.uint8)
        C.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
        return out.reshape(256, -1)

    before = [raw(layer.k), raw(layer.v)]
    src_slots, dst_slots = np.arange(100, 200, dtype=np.int32), np.arange(0, 200, 2, dtype=np.int64)
    g = Graph(64)
    s, d = g.input("s", GGMLType.I32, 100), g.input("d", GGMLType.I64, 100)
    add_compaction(g, layer, s, d)
    backend.alloc_graph(g.gf, maintenance=True)
    g.set_input("s", src_slots)
    g.set_input("d", dst_slots)
    backend.compute(g.gf, maintenance=True)
    g.close()
    for old, new in zip(before, [raw(layer.k), raw(layer.v)]):
        assert np.array_equal(new[dst_slots], old[src_slots])
    cache.close()
    backend.close()


@pytest.mark.parametrize("name", ["f16", "q8_0", "q4_0", "bf16", "f32"])
def test_stats_report_the_bytes_allocated(model, name):
    base, side = model
    eng = _bounded(base, side, name)
    st = eng.stats()
    row = C.ggml_row_size(CACHE_TYPES[name], 64)  # 2 KV heads of 32
    assert st["kv_bytes"] == 2 * 2 * eng.cache.capacity * row  # 2 layers, K and V
    assert (st["cache_type_k"], st["cache_type_v"]) == (name, name)
    eng.close()


# --- everything that reads or writes the cache keeps working ------------------------------------
def _logits_run(eng, n=120, seed=1):
    """Feed ``n`` random tokens in chunks of 16 (a bounded engine compresses between them)."""
    tokens = random_prompt(n, seed=seed)
    chunks = [(i, tokens[i : i + 16]) for i in range(0, n, 16)]
    return np.concatenate(
        [eng.runner.step(np.array(c), np.arange(i, i + len(c)), all_logits=True)[0] for i, c in chunks]
    )


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_a_bounded_run_with_memory_stays_close_to_the_f16_cache(model, name):
    """Evictions every few steps: compaction moves, the memory write gathers quantized rows, and
    the indexer scores; quantization error only (q8_0 ~1/256 of a value, q4_0 ~1/16) separates the
    runs, so the latent memory and the logits stay close to the f16 cache's."""
    base, side = model
    runs = {}
    for t in ("f16", name):
        eng = _bounded(base, side, t)
        logits = _logits_run(eng)
        assert sum(eng.stats()["tokens_evicted"]) > 0 and eng.cache.indexmem.memory_used == {0, 1}
        m = np.empty((16, 32), dtype=np.float32)
        C.ggml_backend_tensor_get(eng.cache.indexmem.mem_m[0], m.ctypes.data, 0, m.nbytes)
        runs[t] = logits, m
        eng.close()
    (lf, mf), (lq, mq) = runs["f16"], runs[name]
    print(
        f"{name}: memory {np.abs(mq - mf).max() / np.abs(mf).max():.2e}, logits median "
        f"{np.median(np.abs(lq - lf)) / np.abs(lf).max():.2e} max {np.abs(lq - lf).max() / np.abs(lf).max():.2e}, "
        f"top1 {np.mean(lq.argmax(-1) == lf.argmax(-1)):.3f}"
    )
    tol = {"q8_0": 0.02, "q4_0": 0.2}[name]
    assert np.abs(mq - mf).max() <= tol * np.abs(mf).max()
    assert np.median(np.abs(lq - lf)) <= tol * np.abs(lf).max()
    # these random tiny models amplify small differences (see test_parity_tiny), q4_0's a lot
    assert np.mean(lq.argmax(-1) == lf.argmax(-1)) >= (0.9 if name == "q8_0" else 0.3)


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "bf16"])
@pytest.mark.parametrize("policy", ["snapkv", "h2o", "tova"])
def test_the_heuristics_attention_mass_is_a_probability_mass(model, name, policy):
    """What attention-based policies observe: each query and head spreads exactly 1 over the
    visible slots, whatever the key type."""
    base, _ = model
    eng = Engine.load(
        str(base), n_ctx=512, policy=policy, budget=200, n_batch=16, cache_type_k=name, cache_type_v=name
    )
    masses = []
    observe = eng.runner.evictor.policy.observe
    eng.runner.evictor.policy.observe = lambda il, obs: masses.append(obs.attn_mass.sum()) or observe(il, obs)
    eng.runner.step(np.array(random_prompt(16, seed=2)), np.arange(16))
    queries = {"snapkv": eng.runner.evictor.attention_queries(16)[0], "h2o": 16, "tova": 1}[policy]
    assert masses and np.allclose(masses, queries * 4, rtol=1e-4)  # 4 query heads
    eng.close()


def _keys(eng, n: int) -> np.ndarray:
    """Layer 0's first ``n`` cached keys, dequantized to f32 by ggml."""
    g = Graph(8)
    rows = g.input("rows", GGMLType.I32, n)
    out = g.output(C.ggml_get_rows(g.ctx, eng.cache.layers[0].k, rows))
    eng.backend.alloc_graph(g.gf, maintenance=True)
    g.set_input("rows", np.arange(n, dtype=np.int32))
    eng.backend.compute(g.gf, maintenance=True)
    keys = g.read(out)
    g.close()
    return keys


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_quantized_keys_are_re_rotated_by_a_context_shift(model, name):
    """As llama.cpp shifts a quantized K: dequantize, rotate, requantize. Keys stored at later
    positions and rotated back equal keys written at the start, up to the roundings: each key was
    quantized twice on one side, once on the other (a q8_0 step is 1/127 of its block's largest
    value, a q4_0 step 1/8)."""
    base, _ = model
    tokens, offset = np.array(random_prompt(40, seed=1), dtype=np.int32), 1000
    moved = Engine.load(str(base), n_ctx=2048, n_batch=64, cache_type_k=name)
    moved.runner.step(tokens, np.arange(offset, offset + 40))
    stale = _keys(moved, 40)
    shift_positions(moved.runner, offset, sinks=0)
    direct = Engine.load(str(base), n_ctx=2048, n_batch=64, cache_type_k=name)
    direct.runner.step(tokens, np.arange(40))
    want, got = _keys(direct, 40), _keys(moved, 40)
    step = np.abs(want).max() / {"q8_0": 127, "q4_0": 8}[name]
    assert np.abs(got - want).max() <= 2.5 * step
    assert np.abs(stale - want).max() > 5 * step  # unrotated keys are far off: the shift did it
    nxt = np.array([7], dtype=np.int32)
    a, b = moved.runner.step(nxt, np.array([40]))[0], direct.runner.step(nxt, np.array([40]))[0]
    assert np.mean(np.abs(a - b)) <= {"q8_0": 0.02, "q4_0": 0.3}[name] * np.abs(b).max()


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_a_quantized_session_restores_exactly_and_refuses_other_types(model, tmp_path, name):
    base, side = model
    eng = _bounded(base, side, name)
    _logits_run(eng, n=96, seed=4)
    path = tmp_path / f"{name}.session"
    eng.save_session(path)
    nxt, pos = np.array([42], dtype=np.int32), np.array([96], dtype=np.int32)
    same = _bounded(base, side, name)
    same.load_session(path)
    np.testing.assert_array_equal(eng.runner.step(nxt, pos)[0], same.runner.step(nxt, pos)[0])
    # an f16 engine refuses it before anything changes: it goes on exactly as its twin that never tried
    other, twin = _bounded(base, side, "f16"), _bounded(base, side, "f16")
    for e in (other, twin):
        _logits_run(e, n=32, seed=5)
    with pytest.raises(SessionError, match=f"K/V cache of types {name}/{name}.*cache_type_k='{name}'"):
        other.load_session(path)
    pos = np.array([32], dtype=np.int32)
    np.testing.assert_array_equal(other.runner.step(nxt, pos)[0], twin.runner.step(nxt, pos)[0])

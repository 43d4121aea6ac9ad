"""The attention kernel (ggml_ops/attention_kernel.c) against a float64 numpy reference.

The reference reads the very K/V values the kernel reads: the cache rows are written by ggml's
set_rows (quantizing where the type is quantized) and read back dequantized by ggml's get_rows, so
what is compared is the kernel's own dequantization, scores, masking, online softmax and weighted
sum. The kernel accumulates in float32: over a few hundred slots its outputs stay within 2e-6 of
the reference, relative to the largest |V| (measured up to 4e-7); 1e-5 is the bound.
"""

import zlib

import numpy as np
import pytest
from indexmem.engine.attention import FLASH, KERNEL, MATMUL, attend, attention_kernel
from indexmem.engine.cache import head_view
from indexmem.engine.cache_types import CACHE_TYPES
from indexmem.ggml_ops.backend import Backend
from indexmem.ggml_ops.bindings import C
from indexmem.ggml_ops.graph import Graph, new_context
from indexmem.ggml_ops.kernel import FLAGS, _cpu_flags, build_kernel, open_kernel
from indexmem.ggml_ops.structs import GGMLType
from test_bindings import importance_both_ways
from test_matmul_kernel import products

RTOL = 1e-5
KERNEL_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]


@pytest.fixture(scope="module")
def backend():
    be = Backend("cpu", n_threads=1)
    yield be
    be.close()


@pytest.fixture(scope="module", autouse=True)
def kernel():
    k = attention_kernel()
    if k is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    return k


def masks(kind: str, n_tokens: int, n_kv: int, n_used: int, rng) -> np.ndarray:
    """0/-inf masks [n_tokens, n_kv] of the shapes the engine builds, and harder ones."""
    visible = np.zeros((n_tokens, n_kv), dtype=bool)
    s, t = np.arange(n_kv)[None, :], np.arange(n_tokens)[:, None]
    if kind == "causal":  # earlier tokens, then this step's causally; the rest is padding
        visible = (s < n_used) | ((s >= n_used) & (s - n_used <= t))
    elif kind == "window":  # a sliding window of 20 positions
        visible = (s <= n_used + t) & (n_used + t - s < 20)
    elif kind == "holes":  # random empty slots, each query sees at least one
        visible = rng.random((n_tokens, n_kv)) < 0.3
        visible[:, 0] = True
    return np.where(visible, np.float16(0), np.float16(-np.inf))


def run(
    backend, type_name, hd, n_head, n_head_kv, n_tokens, n_kv, mask, rng, scale=0.125, path=KERNEL, lse=False
):
    """Kernel output [n_tokens, n_head, hd] and the f32 K, V [n_kv, n_head_kv, hd] it saw (with
    ``lse``, the output is a pair: the attention output and the log-sum-exp [n_tokens, n_head])."""
    t = CACHE_TYPES[type_name]
    capacity = n_kv + 16
    ctx = new_context(2)
    k_cache = C.ggml_new_tensor_2d(ctx, t, hd * n_head_kv, capacity)
    v_cache = C.ggml_new_tensor_2d(ctx, t, hd * n_head_kv, capacity)
    buf = backend.alloc_ctx_tensors(ctx)
    try:
        g = Graph(64)
        rows = g.input("rows", GGMLType.I64, n_kv)
        k_src = g.input("k", GGMLType.F32, hd * n_head_kv, n_kv)
        v_src = g.input("v", GGMLType.F32, hd * n_head_kv, n_kv)
        g.expand(C.ggml_set_rows(g.ctx, k_cache, k_src, rows))
        g.expand(C.ggml_set_rows(g.ctx, v_cache, v_src, rows))
        backend.alloc_graph(g.gf, maintenance=True)
        g.set_input("rows", np.arange(n_kv, dtype=np.int64))
        g.set_input("k", rng.standard_normal((n_kv, hd * n_head_kv)).astype(np.float32))
        g.set_input("v", rng.standard_normal((n_kv, hd * n_head_kv)).astype(np.float32) * 3)
        backend.compute(g.gf, maintenance=True)
        g.close()

        g = Graph(64)
        q = g.input("q", GGMLType.F32, hd, n_head, n_tokens)
        m = g.input("mask", GGMLType.F16, n_kv, n_tokens)
        slots = g.input("slots", GGMLType.I32, n_kv)
        kview, vview = head_view(g.ctx, k_cache, hd, n_kv), head_view(g.ctx, v_cache, hd, n_kv)
        out = attend(g.ctx, path, q, kview, vview, m, scale, with_lse=lse)
        out, lse_out = (g.output(out[0]), g.output(out[1])) if lse else (g.output(out), None)
        k32 = g.output(C.ggml_get_rows(g.ctx, k_cache, slots))
        v32 = g.output(C.ggml_get_rows(g.ctx, v_cache, slots))
        backend.alloc_graph(g.gf)
        queries = rng.standard_normal((n_tokens, n_head, hd)).astype(np.float32)
        g.set_input("q", queries)
        g.set_input("mask", mask)
        g.set_input("slots", np.arange(n_kv, dtype=np.int32))
        backend.compute(g.gf)
        o = g.read(out).reshape(n_tokens, n_head, hd)
        result = (
            (o, g.read(lse_out).reshape(n_tokens, n_head)) if lse else o,
            queries,
            g.read(k32).reshape(n_kv, n_head_kv, hd),
            g.read(v32).reshape(n_kv, n_head_kv, hd),
        )
        g.close()
        return result
    finally:
        C.ggml_backend_buffer_free(buf)
        C.ggml_free(ctx)


def reference(q, k, v, mask, scale, with_lse=False):
    n_tokens, n_head, hd = q.shape
    group = n_head // k.shape[1]
    out, lse = np.zeros(q.shape), np.zeros((n_tokens, n_head))
    for h in range(n_head):
        kh, vh = k[:, h // group].astype(np.float64), v[:, h // group].astype(np.float64)
        s = scale * q[:, h].astype(np.float64) @ kh.T + mask.astype(np.float64)
        top = s.max(axis=1, keepdims=True)
        p = np.exp(s - top)
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ vh
        lse[:, h] = top[:, 0] + np.log(p.sum(axis=1))
    return (out, lse) if with_lse else out


@pytest.mark.parametrize("type_name", KERNEL_TYPES)
@pytest.mark.parametrize(
    "n_tokens,n_head,n_head_kv,hd,n_kv,mask_kind",
    [
        (1, 9, 3, 64, 1280, "causal"),  # SmolLM2 decode over a bounded cache, padded
        (1, 4, 1, 256, 300, "holes"),  # Gemma 3 270M's heads; a table mask with holes
        (3, 14, 2, 64, 77, "causal"),  # few queries per KV head (7 heads each)
        (37, 9, 3, 64, 333, "causal"),  # a prefill chunk: 16-lane blocks, a partial last block
        (64, 4, 2, 128, 200, "window"),  # sliding window: tiles hidden at both ends
        (20, 2, 2, 32, 45, "holes"),  # no grouping, random holes, partial tiles
        (9, 4, 2, 16, 70, "causal"),  # 16-wide heads (the tiny test models)
        # decode's query vectors per KV head, 1 to 8 (each a build of its own), and head widths
        # that leave a remainder after the value loop's groups of 64 dimensions
        (1, 2, 2, 48, 90, "holes"),  # 1
        (2, 2, 2, 64, 50, "window"),  # 2
        (1, 10, 2, 96, 150, "causal"),  # 5
        (1, 12, 2, 128, 300, "holes"),  # 6: Qwen2.5-Coder 1.5B's heads
        (1, 14, 2, 64, 300, "causal"),  # 7: Qwen2.5-Coder 0.5B's heads
        (2, 4, 1, 80, 100, "causal"),  # 8
    ],
)
def test_kernel_matches_the_float64_reference(
    backend, type_name, n_tokens, n_head, n_head_kv, hd, n_kv, mask_kind
):
    if hd % 32 and type_name in ("q8_0", "q4_0"):
        pytest.skip("quantized rows hold whole 32-value blocks per head")
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {n_tokens} {hd}".encode()))
    mask = masks(mask_kind, n_tokens, n_kv, n_kv - n_tokens - 7 if mask_kind == "causal" else n_kv // 2, rng)
    ours, q, k, v = run(backend, type_name, hd, n_head, n_head_kv, n_tokens, n_kv, mask, rng)
    ref = reference(q, k, v, mask, 0.125)
    err = np.abs(ours - ref).max() / np.abs(v).max()
    print(f"{type_name} T={n_tokens} H={n_head}/{n_head_kv} hd={hd} n_kv={n_kv} {mask_kind}: {err:.2e}")
    assert err <= RTOL


def _cpu_has(*flags: str) -> bool:
    return set(flags) <= set(_cpu_flags().split())


BASELINE = tuple(f for f in FLAGS if f != "-march=native")
BUILDS = {
    "portable": (BASELINE, 0, ()),  # baseline x86-64 (or the machine's own baseline elsewhere)
    "avx2": (BASELINE + ("-mavx2", "-mfma", "-mf16c"), 8, ("avx2", "fma", "f16c")),
}


@pytest.mark.parametrize("build", list(BUILDS))
def test_every_build_agrees_with_the_reference(build, backend, tmp_path, monkeypatch):
    """The kernels built for another instruction set than this machine's best (the AVX2 build also
    runs on AVX-512 machines, so both SIMD builds get checked wherever AVX-512 is): attention with
    every type, decode and prefill shapes, masked tiles; the indexer's importance."""
    flags, simd, needs = BUILDS[build]
    if needs and not _cpu_has(*needs):
        pytest.skip(f"this CPU has no {', '.join(needs)}")
    other = open_kernel(build_kernel(tmp_path, flags))
    if build == "portable" and other.lib.im_kernel_simd() != 0:
        pytest.skip("this compiler's baseline already has SIMD")
    assert other.lib.im_kernel_simd() == simd
    monkeypatch.setattr("indexmem.engine.attention.attention_kernel", lambda: other)
    for type_name in KERNEL_TYPES:
        for n_tokens, kind in ((1, "causal"), (2, "causal"), (3, "holes"), (37, "causal"), (20, "window")):
            rng = np.random.default_rng(zlib.crc32(f"{build} {type_name} {n_tokens}".encode()))
            mask = masks(kind, n_tokens, 161, 100, rng)
            ours, q, k, v = run(backend, type_name, 64, 6, 2, n_tokens, 161, mask, rng)
            err = np.abs(ours - reference(q, k, v, mask, 0.125)).max() / np.abs(v).max()
            assert err <= RTOL, (build, type_name, n_tokens, kind, err)
    ours, composed, seen = importance_both_ways(other, 8, 2)  # the indexer's op of the same build
    np.testing.assert_allclose(ours[seen], composed[seen], rtol=1e-5, atol=1e-5)
    if other.supports_mul_mat(GGMLType.Q4_1, 32):  # the weight products (AVX2 and wider builds)
        ref, ours = products(other, 576, 37, 9)
        assert np.array_equal(ours, ref)


def test_prefill_without_memory_for_the_heads_converts_tile_by_tile(backend, kernel):
    """Where the f32 copy of a head cannot be allocated, each tile is converted on the stack:
    the same arithmetic, the same output."""
    rng = np.random.default_rng(5)
    mask = masks("causal", 40, 200, 150, rng)
    with_scratch = run(backend, "q8_0", 64, 6, 2, 40, 200, mask, np.random.default_rng(5))
    kernel.lib.im_kernel_use_head_scratch(0)
    try:
        tiles = run(backend, "q8_0", 64, 6, 2, 40, 200, mask, np.random.default_rng(5))
    finally:
        kernel.lib.im_kernel_use_head_scratch(1)
    assert np.array_equal(with_scratch[0], tiles[0])
    assert np.abs(tiles[0] - reference(*tiles[1:], mask, 0.125)).max() / np.abs(tiles[3]).max() <= RTOL


def test_every_thread_count_gives_the_same_output():
    """Work is split over (KV head, query block) units; any split computes each unit alike."""
    rng = np.random.default_rng(7)
    mask = masks("causal", 40, 128, 80, rng)
    outs = []
    for threads in (1, 2, 3):
        be = Backend("cpu", n_threads=threads)
        try:
            outs.append(run(be, "f16", 64, 8, 2, 40, 128, mask, np.random.default_rng(7))[0])
        finally:
            be.close()
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_supported_types_and_head_sizes(kernel):
    for name in KERNEL_TYPES:
        assert kernel.supports(CACHE_TYPES[name], CACHE_TYPES[name], 64)
    assert not kernel.supports(GGMLType.Q5_1, GGMLType.F16, 64)
    assert kernel.supports(GGMLType.F16, GGMLType.F16, 16)
    assert not kernel.supports(GGMLType.F16, GGMLType.F16, 40)  # not whole 16-float vectors
    assert not kernel.supports(GGMLType.Q8_0, GGMLType.F16, 16)  # not whole blocks
    assert not kernel.supports(GGMLType.F16, GGMLType.F16, 512)  # above its buffers


# flash and matmul round the queries to f16 for the scores (ggml's f16 and quantized dot products):
# measured up to 5.4e-4 (f16) and 2.5e-3 (q8_0) on scores up to 8; the kernel keeps f32 (<= 1.1e-6)
LSE_ATOL = {KERNEL: 1e-5, FLASH: 1e-2, MATMUL: 1e-2}


@pytest.mark.parametrize("path", [KERNEL, FLASH, MATMUL])
@pytest.mark.parametrize(
    "type_name,n_tokens,n_head,n_head_kv,hd,n_kv,mask_kind",
    [
        ("f16", 1, 9, 3, 64, 1280, "causal"),  # decode, padded bounded cache
        ("q8_0", 3, 14, 2, 64, 77, "causal"),
        ("f16", 37, 9, 3, 64, 333, "causal"),  # a prefill chunk, partial last block
        ("f16", 64, 4, 2, 128, 200, "window"),
        ("f32", 20, 2, 2, 32, 45, "holes"),
    ],
)
def test_every_path_gives_the_log_sum_exp_of_the_kept_scores(
    backend, path, type_name, n_tokens, n_head, n_head_kv, hd, n_kv, mask_kind
):
    """The "share" memory gate reads log Σ exp(scale q·k + mask) per query and head from the
    attention step; asking for it leaves the attention output as it was."""
    rng = np.random.default_rng(zlib.crc32(f"lse {type_name} {n_tokens} {hd}".encode()))
    mask = masks(mask_kind, n_tokens, n_kv, n_kv - n_tokens - 7 if mask_kind == "causal" else n_kv // 2, rng)
    shape = (type_name, hd, n_head, n_head_kv, n_tokens, n_kv, mask)
    (out, lse), q, k, v = run(backend, *shape, np.random.default_rng(1), path=path, lse=True)
    plain = run(backend, *shape, np.random.default_rng(1), path=path)[0]
    ref_out, ref_lse = reference(q, k, v, mask, 0.125, with_lse=True)
    err = np.abs(lse - ref_lse).max()
    print(f"{path} {type_name} T={n_tokens}: lse max error {err:.2e} (scores up to {ref_lse.max():.1f})")
    assert err <= LSE_ATOL[path]
    assert np.array_equal(out, plain)
    assert np.abs(out - ref_out).max() / np.abs(v).max() <= (RTOL if path == KERNEL else 1e-2)

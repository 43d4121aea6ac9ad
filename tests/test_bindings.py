"""The ctypes layer: library self-check, struct layout, and ggml ops against numpy."""

import ctypes

import numpy as np
import pytest
from indexmem.engine.attention import attention_kernel
from indexmem.ggml_ops.backend import Backend
from indexmem.ggml_ops.bindings import C
from indexmem.ggml_ops.graph import Graph
from indexmem.ggml_ops.indexmem import importance
from indexmem.ggml_ops.kernel import kernel_status
from indexmem.ggml_ops.reduce import MAX_QUERY_BLOCKS, QUERY_BLOCK, query_blocks, sum_over_rows
from indexmem.ggml_ops.structs import GGMLType, ggml_tensor


def test_library_version_and_struct_layout():
    assert C.ggml_version().decode() == "0.25.3"
    assert ctypes.sizeof(ggml_tensor) == C.ggml_tensor_overhead() - 32


def _run(build, inputs):
    backend = Backend("cpu", n_threads=1)
    g = Graph()
    out = build(g)
    g.output(out)
    backend.alloc_graph(g.gf)
    for name, arr in inputs.items():
        g.set_input(name, arr)
    backend.compute(g.gf)
    result = g.read(out)
    g.close()
    backend.close()
    return result


def test_mul_mat_rms_norm_and_softmax_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8)).astype(np.float32)  # numpy (rows, cols) = ggml [8, 5]
    b = rng.normal(size=(3, 8)).astype(np.float32)

    def build(g):
        ta = g.input("a", GGMLType.F32, 8, 5)
        tb = g.input("b", GGMLType.F32, 8, 3)
        mm = C.ggml_mul_mat(g.ctx, ta, tb)  # [5, 3]: mm[j, i] = a[i] . b[j]
        return C.ggml_soft_max_ext(g.ctx, C.ggml_rms_norm(g.ctx, mm, 1e-6), None, 1.0, 0.0)

    got = _run(build, {"a": a, "b": b})
    mm = b @ a.T
    normed = mm / np.sqrt((mm**2).mean(axis=1, keepdims=True) + 1e-6)
    ref = np.exp(normed - normed.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_a_host_view_shows_each_compute_without_a_copy():
    backend = Backend("cpu", n_threads=1)
    g = Graph()
    a, b = g.input("a", GGMLType.F32, 6, 2), g.input("b", GGMLType.F32, 6, 2)
    out = g.output(C.ggml_add(g.ctx, a, b))
    half = g.output(C.ggml_cast(g.ctx, out, GGMLType.F16))
    backend.alloc_graph(g.gf)
    rng = np.random.default_rng(1)
    views = []
    for _ in range(2):
        x, y = (rng.normal(size=(2, 6)).astype(np.float32) for _ in range(2))
        g.set_input("a", x)
        g.set_input("b", y)
        backend.compute(g.gf)
        views.append(g.view(out))
        np.testing.assert_array_equal(views[-1], x + y)
        np.testing.assert_array_equal(views[-1], g.read(out))
    assert views[0] is views[1] and not views[0].flags.owndata  # one view, refreshed in place
    with pytest.raises(ValueError, match="as float32"):
        g.view(half)
    g.close()
    backend.close()


def test_get_rows_and_set_rows_roundtrip():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(4, 6)).astype(np.float32)
    idx = np.array([2, 0], dtype=np.int64)

    def build(g):
        dst = g.input("dst", GGMLType.F32, 6, 4)
        rows = g.input("rows", GGMLType.F32, 6, 2)
        ids = g.input("ids", GGMLType.I64, 2)
        return C.ggml_set_rows(g.ctx, dst, rows, ids)

    rows = rng.normal(size=(2, 6)).astype(np.float32)
    got = _run(build, {"dst": src, "rows": rows, "ids": idx})
    ref = src.copy()
    ref[idx] = rows
    np.testing.assert_array_equal(got, ref)


def test_sum_over_rows_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 11)).astype(np.float32)  # ggml [11, 37]: 37 rows of 11

    def build(g):
        return sum_over_rows(g.ctx, g.input("x", GGMLType.F32, 11, 37))

    got = _run(build, {"x": x})
    np.testing.assert_allclose(got.reshape(-1), x.sum(axis=0), rtol=1e-5, atol=1e-5)


def run_importance(q, a, keys, n_kv: int, mask, kernel=None) -> np.ndarray:
    """``importance`` over q [T, H_idx, d_idx], a [T, H_idx], keys [capacity, d_idx] and mask
    [T, n_kv] (numpy order): the score of each of the n_kv slots."""
    n_queries, n_heads, dim = q.shape

    def build(g):
        return importance(
            g.ctx,
            g.input("q", GGMLType.F32, dim, n_heads, n_queries),
            g.input("a", GGMLType.F32, n_heads, n_queries),
            g.input("k", GGMLType.F32, dim, len(keys)),
            n_kv,
            g.input("m", GGMLType.F16, n_kv, n_queries),
            kernel,
        )

    return _run(build, {"q": q, "a": a, "k": keys, "m": mask}).reshape(-1)


def _importance_kernel(path: str):
    if path == "composed":
        return None
    kernel = attention_kernel()
    if kernel is None:
        pytest.skip(f"the CPU kernels are {kernel_status()}")
    return kernel


@pytest.mark.parametrize("path", ["composed", "kernel"])
@pytest.mark.parametrize(
    "n_queries", [1, QUERY_BLOCK, 3 * QUERY_BLOCK + 8, MAX_QUERY_BLOCKS * QUERY_BLOCK + 188]
)
def test_indexer_importance_matches_numpy(n_queries, path):
    """max_t sum_j a[j, t] ReLU(q[:, j, t] . k_s) over the queries that may see slot s: composed
    of ggml ops in blocks of queries (one, several with a partial last one, and blocks grown to keep
    within MAX_QUERY_BLOCKS), or by the CPU kernel (16 slots at a time, a partial last block)."""
    kernel = _importance_kernel(path)
    rng = np.random.default_rng(n_queries)
    n_heads, dim, n_cached, capacity = 3, 16, 90, 90 + n_queries + 5
    n_kv = n_cached + n_queries
    q = rng.normal(size=(n_queries, n_heads, dim)).astype(np.float32)
    a = rng.normal(size=(n_queries, n_heads)).astype(np.float32)
    keys = rng.normal(size=(capacity, dim)).astype(np.float32)
    mask = np.zeros((n_queries, n_kv), np.float16)
    for t in range(n_queries):  # cached slots visible to all, this step's causally
        mask[t, n_cached + t + 1 :] = -np.inf
    mask[:, 7] = -np.inf  # a slot no query may see

    blocks = query_blocks(n_queries)
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [n for _, n in blocks[:-1]]))
    assert sum(n for _, n in blocks) == n_queries and len(blocks) <= MAX_QUERY_BLOCKS
    got = run_importance(q, a, keys, n_kv, mask, kernel)
    per_query = np.einsum(
        "tj,tjs->ts",
        a.astype(np.float64),
        np.maximum(np.einsum("tjd,sd->tjs", q.astype(np.float64), keys[:n_kv]), 0.0),
    )
    want = (per_query + mask.astype(np.float64)).max(axis=0)
    assert got.shape == (n_kv,)
    # an unseen slot scores -inf, or -FLT_MAX where ggml's max pooling started from it
    assert got[7] <= -np.finfo(np.float32).max and np.isfinite(np.delete(got, 7)).all()
    np.testing.assert_allclose(np.delete(got, 7), np.delete(want, 7), rtol=1e-5, atol=1e-5)


def importance_both_ways(kernel, dim: int, n_heads: int):
    """Scores of one random case by ``kernel`` and by the composed ops, and which slots some query
    sees: a cache with holes in the mask (a sliding window's table), whole blocks hidden, and a
    partial last block."""
    rng = np.random.default_rng(dim)
    n_queries, n_kv = 37, 1037
    q = rng.normal(size=(n_queries, n_heads, dim)).astype(np.float32)
    a = rng.normal(size=(n_queries, n_heads)).astype(np.float32)
    keys = rng.normal(size=(n_kv + 3, dim)).astype(np.float32)
    mask = np.where(rng.random((n_queries, n_kv)) < 0.3, -np.inf, 0.0).astype(np.float16)
    mask[:, 160:208] = -np.inf  # three whole blocks no query sees
    ours, composed = (run_importance(q, a, keys, n_kv, mask, k) for k in (kernel, None))
    return ours, composed, (mask != -np.inf).any(axis=0)


@pytest.mark.parametrize("dim,n_heads", [(8, 2), (32, 4), (64, 16)])  # SmolLM2's, Gemma's, the largest
def test_the_importance_kernel_equals_the_composed_op(dim, n_heads):
    kernel = _importance_kernel("kernel")
    assert kernel.supports_importance(dim, n_heads) and not kernel.supports_importance(dim + 64, n_heads)
    ours, composed, seen = importance_both_ways(kernel, dim, n_heads)
    assert not seen[160:208].any() and (ours[~seen] == -np.inf).all()
    assert (composed[~seen] <= -np.finfo(np.float32).max).all()
    np.testing.assert_allclose(ours[seen], composed[seen], rtol=1e-5, atol=1e-5)

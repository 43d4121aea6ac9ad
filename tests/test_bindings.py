"""The ctypes layer: library self-check, struct layout, and ggml ops against numpy."""

import ctypes

import numpy as np

from indexmem.ggml_ops.backend import Backend
from indexmem.ggml_ops.bindings import C
from indexmem.ggml_ops.graph import Graph
from indexmem.ggml_ops.reduce import sum_over_rows
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
    normed = mm / np.sqrt((mm ** 2).mean(axis=1, keepdims=True) + 1e-6)
    ref = np.exp(normed - normed.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


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

"""The Q4_1 weight-product kernel (``ggml_ops/matmul_kernel.c``) against ggml_mul_mat.

Tolerance: none. The kernel keeps ggml's per-pair arithmetic and order, so every output must
equal ggml's to the bit, for any shape (tile edges: rows and columns that do not fill a tile)
and any thread count.
"""

import numpy as np
import pytest
from indexmem import Engine
from indexmem.bench.weight_products import random_q4_1_weight
from indexmem.engine.attention import attention_kernel
from indexmem.ggml_ops.backend import Backend
from indexmem.ggml_ops.bindings import C, tensor_struct
from indexmem.ggml_ops.graph import Graph, new_context
from indexmem.ggml_ops.matmul import MIN_COLUMNS, kernel_applies, weight_product
from indexmem.ggml_ops.structs import GGMLType


@pytest.fixture(scope="module")
def kernel():
    k = attention_kernel()
    if k is None or not k.supports_mul_mat(GGMLType.Q4_1, 32):
        pytest.skip("no AVX2 build of the kernels here: ggml_mul_mat runs every product")
    return k


def products(kernel, k, n, t, threads=1, seed=0):
    """(ggml_mul_mat's W.X, weight_product's) for a random [n, k] Q4_1 weight and a random
    [t, k] input, in one graph."""
    rng = np.random.default_rng(seed)
    backend = Backend("cpu", n_threads=threads)
    ctx, w, buf = random_q4_1_weight(backend, k, n, rng)
    try:
        g = Graph(64)
        x = g.input("x", GGMLType.F32, k, t)
        ref = g.output(C.ggml_mul_mat(g.ctx, w, x))
        ours = g.output(weight_product(g.ctx, w, x, kernel))
        backend.alloc_graph(g.gf)
        g.set_input("x", (rng.standard_normal((t, k)) * rng.uniform(0.1, 10, (t, 1))).astype(np.float32))
        backend.compute(g.gf)
        out = g.read(ref), g.read(ours)
        g.close()
        return out
    finally:
        C.ggml_backend_buffer_free(buf)
        C.ggml_free(ctx)
        backend.close()


@pytest.mark.parametrize(
    "k,n,t",
    [(32, 2, 4), (64, 5, 4), (576, 192, 7), (576, 1536, 37), (1536, 577, 9), (96, 3, 513)],
)
def test_the_kernel_equals_ggml_mul_mat_to_the_bit(kernel, k, n, t):
    ref, ours = products(kernel, k, n, t)
    assert ours.shape == ref.shape == (t, n)
    assert np.array_equal(ours, ref), np.abs(ours - ref).max()


def test_every_thread_count_gives_ggmls_output(kernel):
    """Threads split the weight rows in pairs; an odd count leaves one thread a single row."""
    for threads in (2, 3):
        ref, ours = products(kernel, 128, 11, 10, threads=threads, seed=threads)
        assert np.array_equal(ours, ref)


def test_what_the_kernel_takes_and_what_stays_with_ggml(kernel):
    ctx = new_context(8)
    try:
        q4_1 = C.ggml_new_tensor_2d(ctx, GGMLType.Q4_1, 64, 8)
        q4_0 = C.ggml_new_tensor_2d(ctx, GGMLType.Q4_0, 64, 8)
        f16 = C.ggml_new_tensor_2d(ctx, GGMLType.F16, 64, 8)
        prefill = C.ggml_new_tensor_2d(ctx, GGMLType.F32, 64, MIN_COLUMNS)
        decode = C.ggml_new_tensor_2d(ctx, GGMLType.F32, 64, 1)
        batched = C.ggml_new_tensor_3d(ctx, GGMLType.F32, 64, MIN_COLUMNS, 2)
        assert kernel_applies(kernel, q4_1, prefill)
        assert not kernel_applies(None, q4_1, prefill)
        assert not kernel_applies(kernel, q4_1, decode)  # one column: ggml's vec_dot is as fast
        assert not kernel_applies(kernel, q4_1, batched)
        assert not kernel_applies(kernel, q4_0, prefill) and not kernel_applies(kernel, f16, prefill)
        w = tensor_struct(q4_1)
        w.extra = 1  # what ggml's repack buffer sets: the rows are not in the plain layout
        assert not kernel_applies(kernel, q4_1, prefill)
        w.extra = None
        assert not kernel.supports_mul_mat(GGMLType.Q4_1, 48)  # rows of whole blocks only
    finally:
        C.ggml_free(ctx)


def test_the_engine_prefills_with_it_and_its_logits_do_not_change(kernel, default_model_path, monkeypatch):
    """The default model's weights are Q4_1: a prompt's chunk plans the kernel (a decode step
    does not), and the logits equal those of ggml_mul_mat's graph."""
    import indexmem.engine.forward as forward

    logits, tokens = {}, None
    for on in (True, False):
        monkeypatch.setattr(forward.ForwardRunner, "_weight_kernel", on)
        eng = Engine.load(str(default_model_path), n_ctx=256, n_threads=1)
        try:
            tokens = tokens or eng.tokenize("The tide came in over the flat sand, slowly, then all at once.")
            assert eng.runner.plan(len(tokens), True)[0].weight_kernel == on
            assert not eng.runner.plan(1, False)[0].weight_kernel
            logits[on] = eng.logits(tokens)
        finally:
            eng.close()
    assert np.array_equal(logits[True], logits[False])

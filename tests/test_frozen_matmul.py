"""The student's frozen float16 matrices: the blocked product and its backward equal plain
float32 autograd on the upcast matrix (a student held in float16 meets the engine's logits as the
float32 one does: ``test_student.py``)."""

import pytest
import torch
from indexmem.train.student import frozen_matmul as fm
from indexmem.train.student.weights import load_weights
from test_student import tiny  # noqa: F401  (tiny models of every architecture)


@pytest.mark.parametrize("block_elements", [1 << 24, 7 * 5])  # one block; uneven blocks of 5 rows
def test_blocked_half_product_and_its_gradient_equal_float32_autograd(monkeypatch, block_elements):
    monkeypatch.setattr(fm, "BLOCK_ELEMENTS", block_elements)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(23, 7, generator=g).half()
    x = torch.randn(3, 4, 7, generator=g, requires_grad=True)
    out = fm.frozen_matmul(x, w)
    grad = torch.randn(out.shape, generator=g)
    (out * grad).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = x_ref @ w.float().T
    (ref * grad).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    assert w.grad is None


def test_float32_matrices_take_the_plain_product():
    w, x = torch.randn(5, 3), torch.randn(2, 3)
    assert torch.equal(fm.frozen_matmul(x, w), x @ w.T)


def test_half_matrices_halve_the_weights_and_keep_vectors_float32(tiny):  # noqa: F811
    _, base, _ = tiny
    _, full, _ = load_weights(base)
    _, half, _ = load_weights(base, matrices="f16")
    for name, t in half.items():
        assert t.dtype == (torch.float16 if t.dim() > 1 else torch.float32), name
        torch.testing.assert_close(t.float(), full[name], rtol=2**-10, atol=1e-7)
    with pytest.raises(ValueError, match="matrices"):
        load_weights(base, matrices="q8_0")

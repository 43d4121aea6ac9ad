"""``x @ w.T`` for a frozen float16 matrix without keeping its float32 copy.

Plain autograd would save each upcast matrix for the backward pass, so a model held in float16
would hold its float32 copy again by the end of a forward. Here the product upcasts the matrix
in row blocks (a bounded float32 temporary, even for a 150K-token output head), saves only the
float16 matrix, and upcasts it again in the backward pass. The matrix gets no gradient.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 24  # float32 temporary of at most 64 MB


def _row_blocks(w: torch.Tensor):
    rows = max(1, BLOCK_ELEMENTS // w.shape[1])
    for r0 in range(0, w.shape[0], rows):
        yield r0, w[r0 : r0 + rows].float()


class _HalfMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        out = x.new_empty(*x.shape[:-1], w.shape[0])
        for r0, block in _row_blocks(w):
            out[..., r0 : r0 + block.shape[0]] = x @ block.T
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (w,) = ctx.saved_tensors
        grad_x = None
        for r0, block in _row_blocks(w):
            part = grad_out[..., r0 : r0 + block.shape[0]] @ block
            grad_x = part if grad_x is None else grad_x + part
        return grad_x, None


def frozen_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ w[out, in].T in float32, whatever w is held in."""
    if w.dtype == torch.float32:
        return x @ w.T
    return _HalfMatmul.apply(x, w)

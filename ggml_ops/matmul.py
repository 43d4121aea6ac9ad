"""Weight products by the CPU kernel (``matmul_kernel.c``) where it applies, else ggml's.

A prefill chunk multiplies every Q4_1 weight by many columns at once; ggml does it one (row,
column) pair at a time. The kernel tiles the same arithmetic (equal results, bit for bit). Its
input is quantized by ``ggml_cpy`` into Q8_1, which runs ggml's own quantizer, the one
``ggml_mul_mat`` would have run.
"""

from __future__ import annotations

import ctypes

from .bindings import C, tensor_struct
from .structs import GGMLType

MIN_COLUMNS = 4  # the kernel's tile is 4 columns wide; a decode step (1 column) stays with ggml


def kernel_applies(kernel, weight, x) -> bool:
    """Whether ``kernel`` computes ``weight`` · ``x``: a 2-D Q4_1 weight in ggml's plain layout
    (not repacked: ``extra`` is unset), a 2-D float32 input of at least MIN_COLUMNS columns."""
    if kernel is None:
        return False
    w, v = tensor_struct(weight), tensor_struct(x)
    return (
        kernel.supports_mul_mat(w.type, w.ne[0])
        and not w.extra
        and w.ne[2] == w.ne[3] == 1
        and v.type == GGMLType.F32
        and v.ne[0] == w.ne[0]
        and v.ne[1] >= MIN_COLUMNS
        and v.ne[2] == v.ne[3] == 1
    )


def weight_product(ctx, weight, x, kernel=None):
    """``weight`` [K, N] · ``x`` [K, T] -> [N, T] float32: by the kernel where
    :func:`kernel_applies`, else ``ggml_mul_mat``."""
    if not kernel_applies(kernel, weight, x):
        return C.ggml_mul_mat(ctx, weight, x)
    w, v = tensor_struct(weight), tensor_struct(x)
    quantized = C.ggml_cpy(ctx, x, C.ggml_new_tensor_2d(ctx, GGMLType.Q8_1, v.ne[0], v.ne[1]))
    args = (ctypes.c_void_p * 2)(weight, quantized)
    return C.ggml_custom_4d(ctx, GGMLType.F32, w.ne[1], v.ne[1], 1, 1, args, 2, kernel.mul_mat_q4_1, -1, None)

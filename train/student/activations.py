"""How ggml's CPU matrix products round their activations, so the student computes what the
engine computes and not a float32 idealization of it.

A product with a quantized weight first quantizes the activation rows block by block along
the reduced dimension: to Q8_0 (blocks of 32, scale amax/127 stored as float16) for the
Q4_0/Q5_0/Q8_0 family and Q8_1 (the same values) for Q4_1/Q5_1, to Q8_K (blocks of 256, scale
-max/127 kept in float32) for the k-quants; a float16 weight takes float16 activations. The
weight side is exact: dequantized blocks are what the kernels multiply. Gradients pass straight
through the rounding (the backbone is frozen; only the IndexMem modules learn).
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as Q

_Q8_0 = {Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.Q4_1, Q.Q5_1, Q.IQ4_NL}
_Q8_K = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_XS}


def activation_kind(ggml_type: int) -> str | None:
    if ggml_type == Q.F32:
        return None
    if ggml_type == Q.F16:
        return "f16"
    if ggml_type == Q.BF16:
        return "bf16"
    if ggml_type in _Q8_0:
        return "q8_0"
    if ggml_type in _Q8_K:
        return "q8_K"
    raise ValueError(f"no activation rounding known for ggml type {ggml_type}")


def _blocks_q8_0(x: torch.Tensor) -> torch.Tensor:
    b = x.unflatten(-1, (-1, 32))
    d = b.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(b * inv)
    return (q * d.to(torch.float16).to(x.dtype)).flatten(-2)


def _blocks_q8_k(x: torch.Tensor) -> torch.Tensor:
    b = x.unflatten(-1, (-1, 256))
    idx = b.abs().argmax(-1, keepdim=True)
    peak = torch.gather(b, -1, idx)  # the signed value of largest magnitude
    iscale = torch.where(peak != 0, -127.0 / peak, torch.zeros_like(peak))
    q = torch.clamp(torch.round(iscale * b), max=127.0)
    d = torch.where(peak != 0, 1.0 / iscale, torch.zeros_like(peak))
    return (q * d).flatten(-2)


def round_activations(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    if kind is None:
        return x
    with torch.no_grad():
        if kind == "f16":
            rounded = x.to(torch.float16).to(x.dtype)
        elif kind == "bf16":
            rounded = x.to(torch.bfloat16).to(x.dtype)
        elif kind == "q8_0":
            rounded = _blocks_q8_0(x)
        else:
            rounded = _blocks_q8_k(x)
    return x + (rounded - x).detach() if x.requires_grad else rounded

"""A GGUF model's weights as frozen torch tensors, for the differentiable student.

The tensor table comes from ggml's C ``gguf_*`` parser (``ggml_ops.gguf_reader``, which checks
every extent against the file size); the bytes are memory-mapped and dequantized with gguf-py.
Dequantized weights are exactly what the quantized blocks encode: the student and the engine
differ only in how activations are rounded on the way through the kernels.

``matrices="f16"`` keeps the matrices in float16 instead (vectors stay float32), half the RAM:
a 1.5B model's float32 copy alone is 7 GB. A k-quant's dequantized value carries up to ~20
significant bits, float16 keeps 11, so each weight moves by at most 2^-12 of itself, an order
below the 8-bit rounding ggml applies to the activations of the same product.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from ...engine.hparams import HParams, read_hparams
from ...engine.loader import check_tensors, open_gguf
from ...engine.models import ARCHITECTURES
from ...errors import ModelFormatError, UnsupportedModelError

MATRIX_DTYPES = {"f32": np.float32, "f16": np.float16}


def _tensor(
    raw: np.ndarray, ggml_type: int, ggml_shape: tuple[int, ...], name: str, matrices: str
) -> torch.Tensor:
    numpy_shape = tuple(reversed(ggml_shape))
    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
    except ValueError as exc:
        raise ModelFormatError(f"tensor {name}: unknown ggml type {ggml_type}") from exc
    if qtype == gguf.GGMLQuantizationType.F32:
        arr = raw.view(np.float32).reshape(numpy_shape)
    elif qtype == gguf.GGMLQuantizationType.F16:
        arr = raw.view(np.float16).reshape(numpy_shape)
    else:
        try:
            arr = gguf.quants.dequantize(raw.reshape(numpy_shape[:-1] + (-1,)), qtype)
        except NotImplementedError as exc:
            raise UnsupportedModelError(f"tensor {name}: gguf-py cannot dequantize {qtype.name}") from exc
    dtype = MATRIX_DTYPES[matrices] if len(numpy_shape) > 1 else np.float32
    return torch.from_numpy(np.array(arr, dtype=dtype)).reshape(numpy_shape)


def load_weights(
    path: str | Path, matrices: str = "f32"
) -> tuple[HParams, dict[str, torch.Tensor], dict[str, int]]:
    """(hyper-parameters, {tensor name: tensor in torch order}, {tensor name: ggml type as
    stored}) of a GGUF model whose architecture the engine supports; the tensor list is checked
    as the engine checks it. ``matrices``: "f32" or "f16", how matrices are held."""
    if matrices not in MATRIX_DTYPES:
        raise ValueError(f"matrices must be one of {', '.join(MATRIX_DTYPES)}, not {matrices!r}")
    path = Path(path)
    with open_gguf(path) as g:
        arch = g.get("general.architecture")
        cls = ARCHITECTURES.get(arch)
        if cls is None:
            raise UnsupportedModelError(f"{path}: architecture {arch!r} is not supported")
        hp = read_hparams(g, cls.swa_default_pattern)
        infos = check_tensors(g, cls(hp).tensor_specs())
    data = np.memmap(path, dtype=np.uint8, mode="r")
    weights = {}
    for info in infos:
        raw = np.asarray(data[info.offset : info.offset + info.nbytes])
        weights[info.name] = _tensor(raw, info.ggml_type, info.shape, info.name, matrices)
    del data
    return hp, weights, {info.name: info.ggml_type for info in infos}

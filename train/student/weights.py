"""A GGUF model's weights as frozen float32 torch tensors, for the differentiable student.

The tensor table comes from ggml's C ``gguf_*`` parser (``ggml_ops.gguf_reader``, which checks
every extent against the file size); the bytes are memory-mapped and dequantized with gguf-py.
Dequantized weights are exactly what the quantized blocks encode: the student and the engine
differ only in how activations are rounded on the way through the kernels.
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


def _tensor(raw: np.ndarray, ggml_type: int, ggml_shape: tuple[int, ...], name: str) -> torch.Tensor:
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
    return torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(numpy_shape)


def load_weights(path: str | Path) -> tuple[HParams, dict[str, torch.Tensor], dict[str, int]]:
    """(hyper-parameters, {tensor name: float32 tensor in torch order}, {tensor name: ggml type
    as stored}) of a GGUF model whose architecture the engine supports; the tensor list is
    checked as the engine checks it."""
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
        weights[info.name] = _tensor(raw, info.ggml_type, info.shape, info.name)
    del data
    return hp, weights, {info.name: info.ggml_type for info in infos}

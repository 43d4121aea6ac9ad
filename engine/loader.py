"""GGUF → weights in a backend buffer, validated before anything reaches C.

Weights stay in their stored (quantized) type; nothing is dequantized in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..ggml_ops.backend import Backend
from ..ggml_ops.bindings import C
from ..ggml_ops.graph import new_context
from ..ggml_ops.gguf_reader import GGUFFile, TensorInfo
from ..ggml_ops.structs import SUPPORTED_WEIGHT_TYPES


@dataclass(frozen=True)
class TensorSpec:
    """What an architecture expects of one tensor: its name and ggml-order shape."""
    name: str
    shape: tuple[int, ...]
    required: bool = True


def check_tensors(gguf: GGUFFile, specs: list[TensorSpec]) -> list[TensorInfo]:
    """Every required tensor present with the expected shape and a supported type."""
    found = []
    for spec in specs:
        info = gguf.tensors.get(spec.name)
        if info is None:
            if spec.required:
                raise ModelFormatError(f"{gguf.path}: tensor {spec.name} is missing")
            continue
        if tuple(info.shape) != tuple(spec.shape):
            raise ModelFormatError(
                f"{gguf.path}: tensor {spec.name} has shape {list(info.shape)}, "
                f"expected {list(spec.shape)}")
        if info.ggml_type not in SUPPORTED_WEIGHT_TYPES:
            raise UnsupportedModelError(
                f"{gguf.path}: tensor {spec.name} has unsupported type {info.type_name}")
        found.append(info)
    return found


class Weights:
    """Named weight tensors allocated in one buffer of the backend's main device."""

    def __init__(self, gguf: GGUFFile, infos: list[TensorInfo], backend: Backend):
        self.path = Path(gguf.path)
        self.ctx = new_context(len(infos) + 1)
        self.tensors: dict[str, int] = {}
        for info in infos:
            maker = (C.ggml_new_tensor_1d, C.ggml_new_tensor_2d, C.ggml_new_tensor_3d,
                     C.ggml_new_tensor_4d)[len(info.shape) - 1]
            t = maker(self.ctx, info.ggml_type, *info.shape)
            if C.ggml_nbytes(t) != info.nbytes:
                raise ModelFormatError(f"{self.path}: tensor {info.name} size does not match its type")
            C.ggml_set_name(t, info.name.encode())
            self.tensors[info.name] = t
        self.buffer = backend.alloc_ctx_tensors(self.ctx)
        self.nbytes = C.ggml_backend_buffer_get_size(self.buffer)
        self._upload(infos)

    def _upload(self, infos: list[TensorInfo]) -> None:
        staging = np.empty(max(i.nbytes for i in infos), dtype=np.uint8)
        with open(self.path, "rb") as f:
            for info in sorted(infos, key=lambda i: i.offset):
                view = staging[: info.nbytes]
                f.seek(info.offset)
                if f.readinto(memoryview(view)) != info.nbytes:
                    raise ModelFormatError(f"{self.path}: tensor {info.name} is truncated")
                C.ggml_backend_tensor_set(self.tensors[info.name], view.ctypes.data, 0, info.nbytes)

    def get(self, name: str):
        return self.tensors.get(name)

    def __getitem__(self, name: str):
        return self.tensors[name]

    def close(self) -> None:
        if getattr(self, "buffer", None):
            C.ggml_backend_buffer_free(self.buffer)
            self.buffer = None
        if getattr(self, "ctx", None):
            C.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        self.close()


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, expected a .gguf file")
    return GGUFFile(path)

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
from ..ggml_ops.gguf_reader import GGUFFile, TensorInfo
from ..ggml_ops.graph import new_context
from ..ggml_ops.structs import SUPPORTED_WEIGHT_TYPES, GGMLType


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
                f"{gguf.path}: tensor {spec.name} has shape {list(info.shape)}, expected {list(spec.shape)}"
            )
        if info.ggml_type not in SUPPORTED_WEIGHT_TYPES:
            raise UnsupportedModelError(
                f"{gguf.path}: tensor {spec.name} has unsupported type {info.type_name}"
            )
        if len(spec.shape) == 1 and info.ggml_type != GGMLType.F32:
            # vectors (norms, biases) enter element-wise ops, which abort on anything but f32
            raise ModelFormatError(
                f"{gguf.path}: tensor {spec.name} has type {info.type_name}, expected f32 for a vector"
            )
        found.append(info)
    return found


class Weights:
    """Named weight tensors in backend buffers. Matrices that the CPU's repack buffer type
    accepts go there (as llama.cpp places them), the rest into the device's default buffer."""

    def __init__(self, gguf: GGUFFile, infos: list[TensorInfo], backend: Backend, extra_bufts: bool = True):
        self.path = Path(gguf.path)
        self.tensors: dict[str, int] = {}
        self._ctxs, self._buffers = [], []
        items = [(info.name, info) for info in infos]
        names = {info.name for info in infos}
        if "output.weight" not in names and "token_embd.weight" in names:
            # tied output: a second tensor from the same bytes, so the lm-head mul_mat can use a
            # repacked layout while get_rows keeps reading the plain embedding table
            items.append(("output.weight", gguf.tensors["token_embd.weight"]))
        for buft, group in self._placement(items, backend, extra_bufts).items():
            self._allocate(group, buft, backend)
        self.nbytes = sum(C.ggml_backend_buffer_get_size(b) for b in self._buffers)
        self._upload(items)

    @staticmethod
    def _placement(items, backend: Backend, extra_bufts: bool) -> dict:
        extra = backend.extra_weight_bufts() if extra_bufts else []
        verdicts: dict[tuple, int | None] = {}
        groups: dict[int | None, list] = {}
        for name, info in items:
            buft = None
            if extra and len(info.shape) == 2 and name != "token_embd.weight":
                key = (info.ggml_type, info.shape)
                if key not in verdicts:
                    verdicts[key] = next((b for b in extra if backend.buft_runs_mul_mat(b, *key)), None)
                buft = verdicts[key]
            if buft is None and name != info.name:
                continue  # a tied output that is not repacked: the lm head reads token_embd itself
            groups.setdefault(buft, []).append((name, info))
        return groups

    def _allocate(self, group, buft, backend: Backend) -> None:
        ctx = new_context(len(group) + 1)
        self._ctxs.append(ctx)
        for name, info in group:
            maker = (C.ggml_new_tensor_1d, C.ggml_new_tensor_2d, C.ggml_new_tensor_3d, C.ggml_new_tensor_4d)[
                len(info.shape) - 1
            ]
            t = maker(ctx, info.ggml_type, *info.shape)
            if C.ggml_nbytes(t) != info.nbytes:
                raise ModelFormatError(f"{self.path}: tensor {info.name} size does not match its type")
            C.ggml_set_name(t, name.encode())
            self.tensors[name] = t
        self._buffers.append(backend.alloc_ctx_tensors(ctx, buft))

    def _upload(self, items) -> None:
        items = [(n, i) for n, i in items if n in self.tensors]
        staging = np.empty(max(i.nbytes for _, i in items), dtype=np.uint8)
        with open(self.path, "rb") as f:
            for name, info in sorted(items, key=lambda item: item[1].offset):
                view = staging[: info.nbytes]
                f.seek(info.offset)
                if f.readinto(memoryview(view)) != info.nbytes:
                    raise ModelFormatError(f"{self.path}: tensor {info.name} is truncated")
                C.ggml_backend_tensor_set(self.tensors[name], view.ctypes.data, 0, info.nbytes)

    def get(self, name: str):
        return self.tensors.get(name)

    def __getitem__(self, name: str):
        return self.tensors[name]

    def close(self) -> None:
        for buf in getattr(self, "_buffers", []):
            C.ggml_backend_buffer_free(buf)
        for ctx in getattr(self, "_ctxs", []):
            C.ggml_free(ctx)
        self._buffers, self._ctxs = [], []

    def __del__(self):
        self.close()


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, expected a .gguf file")
    return GGUFFile(path)

"""Read GGUF metadata and tensor descriptors with ggml's C ``gguf_*`` API.

The header is checked in Python first (magic, version, plausible counts) so that C never sees
a file we can already tell is broken; after parsing, every tensor's extent is checked against
the file size, so a truncated file is reported here instead of faulting later.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from . import structs as S
from .bindings import C

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_MAX_COUNT = 1 << 24  # far above any real model's tensor or key count

_SCALAR_GETTERS = {
    S.GGUF_TYPE_UINT8: "gguf_get_val_u8",
    S.GGUF_TYPE_INT8: "gguf_get_val_i8",
    S.GGUF_TYPE_UINT16: "gguf_get_val_u16",
    S.GGUF_TYPE_INT16: "gguf_get_val_i16",
    S.GGUF_TYPE_UINT32: "gguf_get_val_u32",
    S.GGUF_TYPE_INT32: "gguf_get_val_i32",
    S.GGUF_TYPE_FLOAT32: "gguf_get_val_f32",
    S.GGUF_TYPE_UINT64: "gguf_get_val_u64",
    S.GGUF_TYPE_INT64: "gguf_get_val_i64",
    S.GGUF_TYPE_FLOAT64: "gguf_get_val_f64",
    S.GGUF_TYPE_BOOL: "gguf_get_val_bool",
}
# keys whose type the GGUF spec fixes and that are used as text before any other check
_STRING_KEYS = ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.chat_template")
_ARRAY_DTYPES = {
    S.GGUF_TYPE_UINT8: np.uint8,
    S.GGUF_TYPE_INT8: np.int8,
    S.GGUF_TYPE_UINT16: np.uint16,
    S.GGUF_TYPE_INT16: np.int16,
    S.GGUF_TYPE_UINT32: np.uint32,
    S.GGUF_TYPE_INT32: np.int32,
    S.GGUF_TYPE_FLOAT32: np.float32,
    S.GGUF_TYPE_UINT64: np.uint64,
    S.GGUF_TYPE_INT64: np.int64,
    S.GGUF_TYPE_FLOAT64: np.float64,
    S.GGUF_TYPE_BOOL: np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # ggml order: shape[0] is the contiguous dimension
    offset: int  # absolute offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return C.ggml_type_name(self.ggml_type).decode()


def check_header(path: Path) -> int:
    """Validate what can be validated without C; return the file size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read file ({exc.strerror})") from exc
    if len(head) < 24:
        raise ModelFormatError(f"{path}: file is {size} bytes, too short to be a GGUF file")
    if head[:4] != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in SUPPORTED_VERSIONS:
        raise ModelFormatError(f"{path}: unsupported GGUF version {version}")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise ModelFormatError(
            f"{path}: implausible header ({n_tensors} tensors, {n_kv} keys): file is corrupt"
        )
    return size


class GGUFFile:
    """Metadata and tensor table of one GGUF file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file_size = check_header(self.path)
        params = S.gguf_init_params(no_alloc=True, ctx=None)
        self._ctx = C.gguf_init_from_file(str(self.path).encode(), params)
        if not self._ctx:
            raise ModelFormatError(
                f"{self.path}: GGUF parser rejected the file (truncated or corrupt metadata)"
            )
        try:
            self.version = C.gguf_get_version(self._ctx)
            self.data_offset = C.gguf_get_data_offset(self._ctx)
            self._key_ids = {
                C.gguf_get_key(self._ctx, i).decode("utf-8", "replace"): i
                for i in range(C.gguf_get_n_kv(self._ctx))
            }
            self.tensors = self._read_tensors()
            self._check_string_keys()
        except BaseException:
            self.close()
            raise

    def _read_tensors(self) -> dict[str, TensorInfo]:
        tensors = {}
        for i in range(C.gguf_get_n_tensors(self._ctx)):
            name = C.gguf_get_tensor_name(self._ctx, i).decode("utf-8", "replace")
            ne = C.gguf_get_tensor_ne(self._ctx, i)
            shape = tuple(int(ne[d]) for d in range(S.GGML_MAX_DIMS))
            while len(shape) > 1 and shape[-1] == 1:
                shape = shape[:-1]
            info = TensorInfo(
                name=name,
                ggml_type=C.gguf_get_tensor_type(self._ctx, i),
                shape=shape,
                offset=self.data_offset + C.gguf_get_tensor_offset(self._ctx, i),
                nbytes=C.gguf_get_tensor_size(self._ctx, i),
            )
            if info.offset + info.nbytes > self.file_size:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} ends at byte {info.offset + info.nbytes} but the "
                    f"file has {self.file_size} bytes (truncated file)"
                )
            tensors[name] = info
        return tensors

    def _check_string_keys(self) -> None:
        for key in _STRING_KEYS:
            kid = self._key_ids.get(key)
            if kid is not None and C.gguf_get_kv_type(self._ctx, kid) != S.GGUF_TYPE_STRING:
                raise ModelFormatError(
                    f"{self.path}: metadata key {key!r} is not a string "
                    f"(GGUF type {C.gguf_get_kv_type(self._ctx, kid)})"
                )

    # --- metadata ----------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._key_ids)

    def __contains__(self, key: str) -> bool:
        return key in self._key_ids

    def get(self, key: str, default=None):
        """A scalar, a string, a numpy array (numeric arrays) or a list of str (string arrays)."""
        kid = self._key_ids.get(key)
        if kid is None:
            return default
        kv_type = C.gguf_get_kv_type(self._ctx, kid)
        if kv_type == S.GGUF_TYPE_STRING:
            return C.gguf_get_val_str(self._ctx, kid).decode("utf-8", "replace")
        if kv_type == S.GGUF_TYPE_ARRAY:
            return self._get_array(kid)
        getter = _SCALAR_GETTERS.get(kv_type)
        if getter is None:
            raise ModelFormatError(f"{self.path}: key {key} has unknown type {kv_type}")
        return getattr(C, getter)(self._ctx, kid)

    def array_length(self, key: str) -> int:
        kid = self._key_ids.get(key)
        if kid is None or C.gguf_get_kv_type(self._ctx, kid) != S.GGUF_TYPE_ARRAY:
            return 0
        return C.gguf_get_arr_n(self._ctx, kid)

    def value_type(self, key: str) -> tuple[int, int | None] | None:
        """(GGUF type, element type of an array or None) of ``key``; None when it is absent."""
        kid = self._key_ids.get(key)
        if kid is None:
            return None
        kv_type = C.gguf_get_kv_type(self._ctx, kid)
        return kv_type, C.gguf_get_arr_type(self._ctx, kid) if kv_type == S.GGUF_TYPE_ARRAY else None

    def raw_strings(self, key: str) -> list[bytes]:
        """The elements of the string array ``key``, undecoded (two invalid byte strings stay
        distinct, where decoding with replacement could make them equal)."""
        kid = self._key_ids[key]
        return [C.gguf_get_arr_str(self._ctx, kid, i) for i in range(C.gguf_get_arr_n(self._ctx, kid))]

    def _get_array(self, kid: int):
        n = C.gguf_get_arr_n(self._ctx, kid)
        arr_type = C.gguf_get_arr_type(self._ctx, kid)
        if arr_type == S.GGUF_TYPE_STRING:
            return [C.gguf_get_arr_str(self._ctx, kid, i).decode("utf-8", "replace") for i in range(n)]
        dtype = _ARRAY_DTYPES.get(arr_type)
        if dtype is None:
            raise ModelFormatError(f"{self.path}: array key has unsupported element type {arr_type}")
        if n == 0:
            return np.zeros(0, dtype=dtype)
        ptr = C.gguf_get_arr_data(self._ctx, kid)
        buf = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype).copy()

    # --- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_ctx", None):
            C.gguf_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

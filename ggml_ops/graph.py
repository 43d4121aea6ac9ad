"""A ggml compute graph under construction: its context, its inputs and its named nodes."""

from __future__ import annotations

import ctypes

import numpy as np

from . import structs as S
from .backend import GRAPH_SIZE
from .bindings import C, tensor_struct

_NP_TO_GGML = {
    np.dtype(np.float32): S.GGMLType.F32,
    np.dtype(np.float16): S.GGMLType.F16,
    np.dtype(np.int32): S.GGMLType.I32,
    np.dtype(np.int64): S.GGMLType.I64,
}


def shape_of(t) -> tuple[int, ...]:
    return tuple(tensor_struct(t).ne)


def array_shape(t) -> tuple[int, ...]:
    """numpy's shape for ggml tensor ``t``: its dimensions reversed, trailing ones dropped."""
    ne = list(shape_of(t))
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return tuple(ne[::-1])


def new_context(n_tensors: int, extra_bytes: int = 0):
    """A no_alloc ggml context with room for ``n_tensors`` tensor headers."""
    params = S.ggml_init_params(C.ggml_tensor_overhead() * n_tensors + extra_bytes, None, True)
    ctx = C.ggml_init(params)
    if not ctx:
        raise MemoryError("ggml_init failed")
    return ctx


class Graph:
    """One forward graph. Nodes are built with the C ops on ``self.ctx``; inputs are declared
    with :meth:`input` and filled after allocation with :meth:`set_input`."""

    def __init__(self, max_nodes: int = GRAPH_SIZE):
        self.ctx = new_context(max_nodes, C.ggml_graph_overhead_custom(max_nodes, False))
        self.gf = C.ggml_new_graph_custom(self.ctx, max_nodes, False)
        self.inputs: dict[str, int] = {}
        self.named: dict[str, int] = {}
        self.logits = None  # the node whose value a step returns
        self._views: dict[int, np.ndarray] = {}

    def input(self, name: str, ggml_type: int, *shape: int):
        maker = (C.ggml_new_tensor_1d, C.ggml_new_tensor_2d, C.ggml_new_tensor_3d)[len(shape) - 1]
        t = maker(self.ctx, ggml_type, *shape)
        C.ggml_set_name(t, name.encode())
        C.ggml_set_input(t)
        self.inputs[name] = t
        return t

    def name(self, t, name: str):
        C.ggml_set_name(t, name.encode())
        self.named[name] = t
        return t

    def output(self, t):
        """Keep ``t`` alive to the end of compute so it can be read back."""
        C.ggml_set_output(t)
        C.ggml_build_forward_expand(self.gf, t)
        return t

    def expand(self, t):
        C.ggml_build_forward_expand(self.gf, t)
        return t

    def set_input(self, name: str, array: np.ndarray) -> None:
        t = self.inputs[name]
        array = np.ascontiguousarray(array)
        expected = C.ggml_nbytes(t)
        if array.nbytes != expected or _NP_TO_GGML.get(array.dtype) != tensor_struct(t).type:
            raise ValueError(
                f"input {name}: {array.dtype} {array.shape} does not fit tensor "
                f"{shape_of(t)} of {expected} bytes"
            )
        C.ggml_backend_tensor_set(t, array.ctypes.data, 0, expected)

    def read(self, t, dtype=np.float32) -> np.ndarray:
        shape = array_shape(t)
        out = np.empty(shape, dtype=dtype)
        if out.nbytes != C.ggml_nbytes(t):
            raise ValueError(f"cannot read tensor of shape {shape[::-1]} as {dtype}")
        C.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
        return out

    def view(self, t) -> np.ndarray:
        """``t``'s float32 values without a copy where they sit in host memory (the CPU
        backend), else a copy (:meth:`read`). A view shows the last compute's values: take a
        copy of what must outlive the next compute. Only for a graph that stays allocated."""
        hit = self._views.get(t)
        if hit is None:
            s = tensor_struct(t)
            if not (s.buffer and s.data and C.ggml_backend_buffer_is_host(s.buffer)):
                return self.read(t)
            shape, nbytes = array_shape(t), C.ggml_nbytes(t)
            if s.type != S.GGMLType.F32 or nbytes != 4 * int(np.prod(shape)):
                raise ValueError(f"cannot view tensor of shape {shape[::-1]} and type {s.type} as float32")
            raw = (ctypes.c_char * nbytes).from_address(s.data)
            hit = self._views[t] = np.frombuffer(raw, dtype=np.float32).reshape(shape)
        return hit

    def close(self) -> None:
        self._views = {}
        if self.ctx:
            C.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        self.close()

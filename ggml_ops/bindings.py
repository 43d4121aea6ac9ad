"""ctypes prototypes for the ggml, ggml-backend, ggml-alloc and gguf C APIs.

All handles (contexts, tensors, graphs, backends, buffers) travel as ``c_void_p``; tensor
fields are read through :class:`ggml_tensor` mirrors only where needed. ``C`` is the single
namespace the rest of indexmem calls into, e.g. ``C.ggml_add(ctx, a, b)``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from types import SimpleNamespace

from ..errors import BackendError
from .lib import EXPECTED_GGML_VERSION, find_symbol
from .structs import ggml_init_params, ggml_tensor, gguf_init_params

P = ctypes.c_void_p
I32 = ctypes.c_int
I64 = ctypes.c_int64
U64 = ctypes.c_uint64
SZ = ctypes.c_size_t
F32 = ctypes.c_float
F64 = ctypes.c_double
B = ctypes.c_bool
STR = ctypes.c_char_p

_SIGNATURES: dict[str, tuple] = {
    # --- core -------------------------------------------------------------------------
    "ggml_version": (STR, []),
    "ggml_tensor_overhead": (SZ, []),
    "ggml_graph_overhead_custom": (SZ, [SZ, B]),
    "ggml_init": (P, [ggml_init_params]),
    "ggml_free": (None, [P]),
    "ggml_type_name": (STR, [I32]),
    "ggml_type_size": (SZ, [I32]),
    "ggml_blck_size": (I64, [I32]),
    "ggml_row_size": (SZ, [I32, I64]),
    "ggml_nbytes": (SZ, [P]),
    "ggml_new_tensor_1d": (P, [P, I32, I64]),
    "ggml_new_tensor_2d": (P, [P, I32, I64, I64]),
    "ggml_new_tensor_3d": (P, [P, I32, I64, I64, I64]),
    "ggml_new_tensor_4d": (P, [P, I32, I64, I64, I64, I64]),
    "ggml_get_first_tensor": (P, [P]),
    "ggml_get_next_tensor": (P, [P, P]),
    "ggml_get_tensor": (P, [P, STR]),
    "ggml_set_name": (P, [P, STR]),
    "ggml_set_input": (None, [P]),
    "ggml_set_output": (None, [P]),
    "ggml_validate_row_data": (B, [I32, P, SZ]),
    "ggml_log_set": (None, [P, P]),
    # --- ops --------------------------------------------------------------------------
    "ggml_add": (P, [P, P, P]),
    "ggml_mul": (P, [P, P, P]),
    "ggml_scale": (P, [P, P, F32]),
    "ggml_tanh": (P, [P, P]),
    "ggml_silu": (P, [P, P]),
    "ggml_gelu": (P, [P, P]),
    "ggml_relu": (P, [P, P]),
    "ggml_sigmoid": (P, [P, P]),
    "ggml_sqr": (P, [P, P]),
    "ggml_log": (P, [P, P]),
    "ggml_div": (P, [P, P, P]),
    "ggml_sub": (P, [P, P, P]),
    "ggml_scale_bias": (P, [P, P, F32, F32]),
    "ggml_pool_1d": (P, [P, P, I32, I32, I32, I32]),
    "ggml_swiglu_split": (P, [P, P, P]),
    "ggml_geglu_split": (P, [P, P, P]),
    "ggml_rms_norm": (P, [P, P, F32]),
    "ggml_mul_mat": (P, [P, P, P]),
    "ggml_sum_rows": (P, [P, P]),
    "ggml_out_prod": (P, [P, P, P]),
    "ggml_fill": (P, [P, P, F32]),
    "ggml_prec_set_acc": (B, [P, I32]),
    "ggml_cpy": (P, [P, P, P]),
    "ggml_cast": (P, [P, P, I32]),
    "ggml_cont": (P, [P, P]),
    "ggml_concat": (P, [P, P, P, I32]),
    "ggml_transpose": (P, [P, P]),
    "ggml_permute": (P, [P, P, I32, I32, I32, I32]),
    "ggml_reshape_1d": (P, [P, P, I64]),
    "ggml_reshape_2d": (P, [P, P, I64, I64]),
    "ggml_reshape_3d": (P, [P, P, I64, I64, I64]),
    "ggml_view_1d": (P, [P, P, I64, SZ]),
    "ggml_view_2d": (P, [P, P, I64, I64, SZ, SZ]),
    "ggml_view_3d": (P, [P, P, I64, I64, I64, SZ, SZ, SZ]),
    "ggml_get_rows": (P, [P, P, P]),
    "ggml_set_rows": (P, [P, P, P, P]),
    "ggml_rope_ext": (P, [P, P, P, P, I32, I32, I32, F32, F32, F32, F32, F32, F32]),
    "ggml_soft_max_ext": (P, [P, P, P, F32, F32]),
    "ggml_flash_attn_ext": (P, [P, P, P, P, P, F32, F32, F32]),
    "ggml_custom_4d": (P, [P, I32, I64, I64, I64, I64, P, I32, P, I32, P]),
    # --- graph ------------------------------------------------------------------------
    "ggml_new_graph_custom": (P, [P, SZ, B]),
    "ggml_build_forward_expand": (None, [P, P]),
    "ggml_graph_n_nodes": (I32, [P]),
    "ggml_graph_node": (P, [P, I32]),
    "ggml_graph_get_tensor": (P, [P, STR]),
    # --- backend ----------------------------------------------------------------------
    "ggml_backend_load_all": (None, []),
    "ggml_backend_dev_count": (SZ, []),
    "ggml_backend_dev_get": (P, [SZ]),
    "ggml_backend_dev_name": (STR, [P]),
    "ggml_backend_dev_description": (STR, [P]),
    "ggml_backend_dev_type": (I32, [P]),
    "ggml_backend_dev_init": (P, [P, STR]),
    "ggml_backend_dev_backend_reg": (P, [P]),
    "ggml_backend_reg_get_proc_address": (P, [P, STR]),
    "ggml_backend_get_device": (P, [P]),
    "ggml_backend_name": (STR, [P]),
    "ggml_backend_free": (None, [P]),
    "ggml_backend_get_default_buffer_type": (P, [P]),
    "ggml_backend_alloc_ctx_tensors": (P, [P, P]),
    "ggml_backend_alloc_ctx_tensors_from_buft": (P, [P, P]),
    "ggml_backend_buft_alloc_buffer": (P, [P, SZ]),
    "ggml_backend_buft_name": (STR, [P]),
    "ggml_backend_dev_supports_op": (B, [P, P]),
    "ggml_backend_buffer_free": (None, [P]),
    "ggml_backend_buffer_get_size": (SZ, [P]),
    "ggml_backend_buffer_set_usage": (None, [P, I32]),
    "ggml_backend_buffer_clear": (None, [P, ctypes.c_uint8]),
    "ggml_backend_buffer_is_host": (B, [P]),
    "ggml_backend_tensor_set": (None, [P, P, SZ, SZ]),
    "ggml_backend_tensor_get": (None, [P, P, SZ, SZ]),
    "ggml_backend_sched_new": (P, [P, P, I32, SZ, B, B]),
    "ggml_backend_sched_free": (None, [P]),
    "ggml_backend_sched_reserve": (B, [P, P]),
    "ggml_backend_sched_alloc_graph": (B, [P, P]),
    "ggml_backend_sched_graph_compute": (I32, [P, P]),
    "ggml_backend_sched_reset": (None, [P]),
    "ggml_backend_sched_get_buffer_size": (SZ, [P, P]),
    "ggml_backend_cpu_init": (P, []),
    "ggml_backend_is_cpu": (B, [P]),
    "ggml_backend_cpu_set_n_threads": (None, [P, I32]),
    # --- gguf -------------------------------------------------------------------------
    "gguf_init_from_file": (P, [STR, gguf_init_params]),
    "gguf_free": (None, [P]),
    "gguf_get_version": (ctypes.c_uint32, [P]),
    "gguf_get_alignment": (SZ, [P]),
    "gguf_get_data_offset": (SZ, [P]),
    "gguf_get_n_kv": (I64, [P]),
    "gguf_find_key": (I64, [P, STR]),
    "gguf_get_key": (STR, [P, I64]),
    "gguf_get_kv_type": (I32, [P, I64]),
    "gguf_get_arr_type": (I32, [P, I64]),
    "gguf_get_val_u8": (ctypes.c_uint8, [P, I64]),
    "gguf_get_val_i8": (ctypes.c_int8, [P, I64]),
    "gguf_get_val_u16": (ctypes.c_uint16, [P, I64]),
    "gguf_get_val_i16": (ctypes.c_int16, [P, I64]),
    "gguf_get_val_u32": (ctypes.c_uint32, [P, I64]),
    "gguf_get_val_i32": (ctypes.c_int32, [P, I64]),
    "gguf_get_val_f32": (F32, [P, I64]),
    "gguf_get_val_u64": (U64, [P, I64]),
    "gguf_get_val_i64": (I64, [P, I64]),
    "gguf_get_val_f64": (F64, [P, I64]),
    "gguf_get_val_bool": (B, [P, I64]),
    "gguf_get_val_str": (STR, [P, I64]),
    "gguf_get_arr_n": (SZ, [P, I64]),
    "gguf_get_arr_data": (P, [P, I64]),
    "gguf_get_arr_str": (STR, [P, I64, SZ]),
    "gguf_get_n_tensors": (I64, [P]),
    "gguf_find_tensor": (I64, [P, STR]),
    "gguf_get_tensor_offset": (SZ, [P, I64]),
    "gguf_get_tensor_name": (STR, [P, I64]),
    "gguf_get_tensor_ne": (ctypes.POINTER(I64), [P, I64]),
    "gguf_get_tensor_type": (I32, [P, I64]),
    "gguf_get_tensor_size": (SZ, [P, I64]),
}


def _bind() -> SimpleNamespace:
    ns = SimpleNamespace()
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = find_symbol(name)
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(ns, name, fn)
    return ns


def _self_check(ns: SimpleNamespace) -> None:
    version = ns.ggml_version().decode()
    if version != EXPECTED_GGML_VERSION:
        raise BackendError(
            f"ggml {version} found in llama-cpp-python, but indexmem mirrors ggml "
            f"{EXPECTED_GGML_VERSION}; install llama-cpp-python==0.3.36"
        )
    # ggml_tensor_overhead() is sizeof(ggml_object) (32 bytes) + sizeof(ggml_tensor)
    expected = ns.ggml_tensor_overhead() - 32
    if ctypes.sizeof(ggml_tensor) != expected:
        raise BackendError(
            f"ggml_tensor mirror is {ctypes.sizeof(ggml_tensor)} bytes but the library's is "
            f"{expected}: struct layout mismatch"
        )


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LOG_WARN, _LOG_CONT = 3, 5
_log_state = {"last_shown": False}


def log_to_stderr(level, text, user_data):
    """ggml's own messages: warnings and errors only, unless INDEXMEM_VERBOSE is set."""
    show = level >= _LOG_WARN if level != _LOG_CONT else _log_state["last_shown"]
    if os.environ.get("INDEXMEM_VERBOSE"):
        show = True
    _log_state["last_shown"] = show
    if show and text:
        sys.stderr.write(text.decode("utf-8", "replace"))


C = _bind()
_self_check(C)
_log_callback = LOG_CALLBACK(log_to_stderr)
C.ggml_log_set(ctypes.cast(_log_callback, ctypes.c_void_p), None)


def tensor_struct(ptr: int) -> ggml_tensor:
    """A live view of the C tensor at ``ptr`` (reads and writes go to the C memory)."""
    return ggml_tensor.from_address(ptr)

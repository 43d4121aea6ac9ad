"""llama.cpp (through llama-cpp-python) as the reference engine, in one place.

On CPUs reporting AMX, llama.cpp would put quantized weights in its AMX buffer, whose mul_mat
segfaults on this project's machines (llama.cpp issue 20824); our engine never uses it. There
llama.cpp is loaded without extra weight buffer types, so it also skips the CPU_REPACK layout
(same arithmetic, other kernels); everywhere else it runs as shipped.
"""

from __future__ import annotations

from pathlib import Path


def amx_present() -> bool:
    from ..ggml_ops.backend import Backend

    backend = Backend("cpu", n_threads=1)
    try:
        return backend.unsafe_bufts_present()
    finally:
        backend.close()


def open_llama_cpp(path: str | Path, **kwargs):
    """``llama_cpp.Llama(path, **kwargs)``, without the AMX buffer where it would crash."""
    import llama_cpp
    import llama_cpp.llama_cpp as api

    if not amx_present():
        return llama_cpp.Llama(str(path), **kwargs)
    original = api.llama_model_default_params

    def without_extra_bufts():
        params = original()
        params.use_extra_bufts = False
        return params

    api.llama_model_default_params = without_extra_bufts
    try:
        return llama_cpp.Llama(str(path), **kwargs)
    finally:
        api.llama_model_default_params = original

"""Locate and load the ggml shared libraries bundled with llama-cpp-python.

indexmem never ships or loads a ggml of its own: the libraries inside the installed
``llama_cpp`` package are our compute library, so the engine and llama.cpp (our numerical
reference) always run the very same kernels.  Loading a second ggml into the process would
give two copies of global state (backend registry, thread pools), hence the single loader.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import cache
from pathlib import Path

from ..errors import BackendError

# The version of ggml this binding mirrors (struct layouts, enums). llama-cpp-python==0.3.36.
EXPECTED_GGML_VERSION = "0.25.3"
_LIB_NAMES = ("libggml-base", "libggml-cpu", "libggml")


def llama_cpp_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise BackendError(
            "llama-cpp-python is not installed; indexmem needs llama-cpp-python==0.3.36 "
            "(pip install 'llama-cpp-python==0.3.36')"
        )
    lib_dir = Path(spec.origin).parent / "lib"
    if not lib_dir.is_dir():
        raise BackendError(f"llama_cpp is installed but has no lib/ folder at {lib_dir}")
    return lib_dir


def _find_library(lib_dir: Path, stem: str) -> Path:
    for suffix in (".so", ".dylib", ".dll"):
        candidate = lib_dir / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise BackendError(f"{stem} not found in {lib_dir}: the llama-cpp-python build is incomplete")


@cache
def load_libraries() -> dict[str, ctypes.CDLL]:
    """Load libggml-base, libggml-cpu and libggml once, globally, in dependency order."""
    lib_dir = llama_cpp_lib_dir()
    mode = getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOW", 0)
    libs = {}
    for stem in _LIB_NAMES:
        path = _find_library(lib_dir, stem)
        try:
            libs[stem] = ctypes.CDLL(str(path), mode=mode)
        except OSError as exc:
            raise BackendError(f"cannot load {path}: {exc}") from exc
    return libs


def find_symbol(name: str):
    """Return the C function ``name`` from whichever ggml library exports it."""
    for lib in load_libraries().values():
        try:
            return getattr(lib, name)
        except AttributeError:
            continue
    raise BackendError(
        f"symbol {name} is missing from the ggml libraries of llama-cpp-python; "
        f"indexmem expects ggml {EXPECTED_GGML_VERSION} (llama-cpp-python==0.3.36)"
    )

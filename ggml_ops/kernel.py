"""The CPU kernels, ggml custom ops in one library: attention (``attention_kernel.c``), the
indexer's importance (``importance_kernel.c``) and Q4_1 weight products (``matmul_kernel.c``).
Compiled once per machine with the system C compiler against the ``ggml.h`` llama-cpp-python
installs, cached, loaded with ctypes.

Nothing depends on them: without a compiler or the header, :func:`load_kernel` returns None (and
says why in :func:`kernel_status`) and all three run on ggml's own ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .bindings import C
from .lib import EXPECTED_GGML_VERSION, llama_cpp_lib_dir
from .structs import GGMLType, ggml_tensor

HERE = Path(__file__).parent
SOURCES = (HERE / "attention_kernel.c", HERE / "importance_kernel.c", HERE / "matmul_kernel.c")
HEADERS = (HERE / "kernel_common.h",)
ABI = 4
# -march=native: the build is for this machine's SIMD (its cache key names the CPU's flags)
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=c11")
_status = {"kernel": "not loaded yet"}


@dataclass(frozen=True)
class Kernel:
    lib: ctypes.CDLL
    path: Path

    @property
    def attention(self) -> int:
        """Address of ``im_attention``, a ``ggml_custom_op_t``."""
        return ctypes.cast(self.lib.im_attention, ctypes.c_void_p).value

    @property
    def importance(self) -> int:
        """Address of ``im_importance`` (``importance_kernel.c``), a ``ggml_custom_op_t``."""
        return ctypes.cast(self.lib.im_importance, ctypes.c_void_p).value

    @property
    def mul_mat_q4_1(self) -> int:
        """Address of ``im_mul_mat_q4_1`` (``matmul_kernel.c``), a ``ggml_custom_op_t``."""
        return ctypes.cast(self.lib.im_mul_mat_q4_1, ctypes.c_void_p).value

    def supports_mul_mat(self, type_w: int, k: int) -> bool:
        """A weight of ``type_w`` with rows of ``k`` values (``matmul_kernel.c``)."""
        return bool(self.lib.im_mul_mat_supports(type_w, k))

    @property
    def simd(self) -> int:
        """Floats per SIMD register of this build: 16 (AVX-512), 8 (AVX2), 0 (portable C)."""
        return int(self.lib.im_kernel_simd())

    def supports(self, type_k: int, type_v: int, head_dim: int) -> bool:
        return bool(self.lib.im_kernel_supports(type_k, type_v, head_dim))

    def query_logits(
        self, type_k: int, rows: np.ndarray, n_head_kv: int, q: np.ndarray, scale: float
    ) -> np.ndarray:
        """``scale * q[h] . k`` of one query ``q`` [H, d] float32 for every K row ``rows``
        [n, row bytes] (uint8, as the cache stores them: ``type_k``, ``n_head_kv`` heads of d),
        query head h reading KV head h // (H // n_head_kv): [H, n] float32."""
        n_head, head_dim = q.shape
        if rows.dtype != np.uint8 or rows.ndim != 2 or q.dtype != np.float32:
            raise TypeError("query_logits takes K rows [n, row bytes] uint8 and a float32 query [H, d]")
        row_bytes = n_head_kv * C.ggml_row_size(type_k, head_dim) if n_head_kv > 0 else 0
        if (
            not self.supports(type_k, type_k, head_dim)
            or n_head_kv < 1
            or n_head % n_head_kv
            or (len(rows) and rows.shape[1] != row_bytes)
        ):
            raise ValueError(
                f"query_logits: {n_head} query heads of {head_dim} over {n_head_kv} KV heads of type "
                f"{type_k} in rows of {rows.shape[1]} bytes is not a shape this kernel takes"
            )
        rows, q = np.ascontiguousarray(rows), np.ascontiguousarray(q)
        out = np.empty((n_head, len(rows)), dtype=np.float32)
        args = (len(rows), row_bytes, n_head_kv, head_dim, q.ctypes.data, n_head, scale, out.ctypes.data)
        done = self.lib.im_query_logits(type_k, rows.ctypes.data, *args)
        if done != 0:
            raise ValueError("query_logits: the kernel refused the shape")
        return out

    def supports_importance(self, dim: int, n_heads: int) -> bool:
        """Index queries of ``n_heads`` heads of ``dim`` dimensions (``importance_kernel.c``)."""
        return bool(self.lib.im_importance_supports(dim, n_heads))


def kernel_status() -> str:
    """Where the loaded kernel is, or why there is none."""
    return _status["kernel"]


def ggml_include_dir() -> Path:
    """llama-cpp-python installs ggml.h into ``site-packages/include``."""
    return llama_cpp_lib_dir().parent.parent / "include"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _build_key(compiler: str, flags: tuple[str, ...], source_dir: Path) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256()
    for part in (
        *((source_dir / f.name).read_bytes() for f in SOURCES + HEADERS),
        version,
        " ".join(flags),
        EXPECTED_GGML_VERSION,
        _cpu_flags(),
    ):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:20]


def build_kernel(cache: Path, flags: tuple[str, ...] = FLAGS, source_dir: Path = HERE) -> Path:
    """Compile the kernels into ``cache`` (once: the file name is its build's digest); from the
    sources in ``source_dir`` (another version of them: ``bench/kernel_ab.py``)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = ggml_include_dir()
    if not compiler:
        raise OSError("no C compiler (cc) on PATH")
    if not (include / "ggml.h").is_file():
        raise OSError(f"ggml.h not found in {include}")
    target = cache / f"attention-{_build_key(compiler, flags, source_dir)}.so"
    if target.is_file():
        return target
    with atomic_path(target) as tmp:
        done = subprocess.run(
            [
                compiler,
                *flags,
                f"-I{include}",
                f"-I{source_dir}",
                *(str(source_dir / f.name) for f in SOURCES),
            ]
            + ["-o", str(tmp), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[:2000]}")
    return target


def open_kernel(path: Path) -> Kernel:
    """Load a built kernel and check it was built for this ggml (struct layout, block sizes)."""
    lib = ctypes.CDLL(str(path))
    for name, restype, argtypes in (
        ("im_kernel_abi", ctypes.c_int, []),
        ("im_kernel_simd", ctypes.c_int, []),
        ("im_tensor_size", ctypes.c_size_t, []),
        ("im_block_size", ctypes.c_size_t, [ctypes.c_int]),
        ("im_kernel_supports", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int64]),
        ("im_importance_supports", ctypes.c_int, [ctypes.c_int64, ctypes.c_int64]),
        ("im_mul_mat_supports", ctypes.c_int, [ctypes.c_int, ctypes.c_int64]),
        ("im_mul_mat_block_size", ctypes.c_size_t, [ctypes.c_int]),
        (
            "im_query_logits",
            ctypes.c_int,
            [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
            + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p],
        ),
    ):
        fn = getattr(lib, name, None)
        if fn is None:
            raise OSError(f"{path} has no {name}: it was built from other sources")
        fn.restype, fn.argtypes = restype, argtypes
    checks = {
        "ABI": (lib.im_kernel_abi(), ABI),
        "sizeof(ggml_tensor)": (lib.im_tensor_size(), ctypes.sizeof(ggml_tensor)),
        "q8_0 block": (lib.im_block_size(GGMLType.Q8_0), C.ggml_type_size(GGMLType.Q8_0)),
        "q4_0 block": (lib.im_block_size(GGMLType.Q4_0), C.ggml_type_size(GGMLType.Q4_0)),
        "q4_1 block": (lib.im_mul_mat_block_size(GGMLType.Q4_1), C.ggml_type_size(GGMLType.Q4_1)),
        "q8_1 block": (lib.im_mul_mat_block_size(GGMLType.Q8_1), C.ggml_type_size(GGMLType.Q8_1)),
    }
    bad = [f"{what} {got} != {want}" for what, (got, want) in checks.items() if got != want]
    if bad:
        raise OSError(f"{path} does not match this ggml: {', '.join(bad)}")
    return Kernel(lib, path)


_loaded: dict[Path, Kernel | None] = {}


def load_kernel(cache: Path) -> Kernel | None:
    """The kernel, built in ``cache`` if needed; None (see :func:`kernel_status`) if it cannot be."""
    if cache not in _loaded:
        try:
            kernel = open_kernel(build_kernel(cache))
            _status["kernel"] = str(kernel.path)
        except (OSError, subprocess.SubprocessError) as exc:
            kernel = None
            _status["kernel"] = f"unavailable: {exc}"
        _loaded[cache] = kernel
    return _loaded[cache]

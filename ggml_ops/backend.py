"""Compute devices: backend selection, weight/cache buffers and graph schedulers.

The engine always computes through ``ggml_backend_sched`` with the chosen device first and the
CPU last, as llama.cpp does, so a CUDA or Metal build of llama-cpp-python is used unchanged
(ops a device lacks fall back to the CPU). Only the CPU path is tested on this project's machines.

Two schedulers share the devices, each with its own compute buffer: one for the forward step's
graph, which stays allocated from step to step, and one for cache-maintenance graphs (memory
writes, compaction moves, context shifts), so that running those never displaces the step graph.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ..errors import BackendError
from . import structs as S
from .bindings import C, tensor_struct

GRAPH_SIZE = 16384  # max nodes per graph; a layer needs ~40, ~200 with an IndexMem indexer
UNSAFE_BUFTS = {b"AMX"}  # extra CPU weight buffer types never used (see extra_weight_bufts)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"


_KINDS = {
    S.BACKEND_DEVICE_TYPE_CPU: "cpu",
    S.BACKEND_DEVICE_TYPE_GPU: "gpu",
    S.BACKEND_DEVICE_TYPE_IGPU: "igpu",
    S.BACKEND_DEVICE_TYPE_ACCEL: "accel",
}
_loaded_all = False


def list_devices() -> list[DeviceInfo]:
    global _loaded_all
    if not _loaded_all:
        C.ggml_backend_load_all()  # registers dynamically built backends (CUDA, Metal, ...) if any
        _loaded_all = True
    devices = []
    for i in range(C.ggml_backend_dev_count()):
        dev = C.ggml_backend_dev_get(i)
        devices.append(
            DeviceInfo(
                name=C.ggml_backend_dev_name(dev).decode(),
                description=(C.ggml_backend_dev_description(dev) or b"").decode(),
                kind=_KINDS.get(C.ggml_backend_dev_type(dev), "other"),
            )
        )
    return devices


class OwnsBuffer:
    """Frees ``self.buffer`` (a backend buffer) and ``self.ctx`` (its ggml context) once."""

    buffer = None
    ctx = None

    def close(self) -> None:
        if self.buffer:
            C.ggml_backend_buffer_free(self.buffer)
            self.buffer = None
        if self.ctx:
            C.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        self.close()


class Backend:
    """A device backend (GPU if asked and present, else CPU) plus the CPU backend, and a scheduler."""

    def __init__(self, device: str = "cpu", n_threads: int = 1):
        if n_threads < 1:
            raise BackendError(f"n_threads must be >= 1, got {n_threads}")
        self.n_threads = n_threads
        devices = list_devices()
        self.cpu = C.ggml_backend_cpu_init()
        if not self.cpu:
            raise BackendError("ggml_backend_cpu_init failed")
        C.ggml_backend_cpu_set_n_threads(self.cpu, n_threads)
        self.main = self.cpu
        if device != "cpu":
            self.main = self._init_device(device, devices) or self.cpu
        self.device_name = C.ggml_backend_name(self.main).decode()
        backends = [self.main] if self.main == self.cpu else [self.main, self.cpu]
        arr = (ctypes.c_void_p * len(backends))(*backends)
        self.sched = C.ggml_backend_sched_new(arr, None, len(backends), GRAPH_SIZE, False, True)
        self.maintenance_sched = C.ggml_backend_sched_new(arr, None, len(backends), GRAPH_SIZE, False, True)
        if not self.sched or not self.maintenance_sched:
            raise BackendError("ggml_backend_sched_new failed")

    @staticmethod
    def _init_device(device: str, devices: list[DeviceInfo]):
        wanted = [
            i
            for i, d in enumerate(devices)
            if (device == "auto" and d.kind in ("gpu", "igpu")) or d.name.lower() == device.lower()
        ]
        if not wanted:
            if device == "auto":
                return None
            names = ", ".join(d.name for d in devices)
            raise BackendError(f"device {device!r} not found; available: {names}")
        backend = C.ggml_backend_dev_init(C.ggml_backend_dev_get(wanted[0]), None)
        if not backend:
            raise BackendError(f"could not initialise device {devices[wanted[0]].name}")
        return backend

    def alloc_ctx_tensors(self, ctx, buft=None) -> int:
        """Allocate every tensor of a no_alloc ggml context in one buffer of the main device
        (or of the buffer type ``buft``)."""
        if buft:
            buf = C.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft)
        else:
            buf = C.ggml_backend_alloc_ctx_tensors(ctx, self.main)
        if not buf:
            raise BackendError("out of memory allocating a backend buffer")
        return buf

    def unsafe_bufts_present(self) -> bool:
        """Does this CPU offer a buffer type we refuse (AMX)? llama.cpp would use it."""
        return any(C.ggml_backend_buft_name(b) in UNSAFE_BUFTS for b in self._raw_extra_bufts())

    def extra_weight_bufts(self) -> list[int]:
        """The CPU's extra weight buffer types (e.g. ``CPU_REPACK``: quantized weights
        re-laid out for the SIMD GEMM kernels), which llama.cpp also uses. Empty on GPUs.

        ``AMX`` is left out: its mul_mat segfaults on machines whose CPUs report AMX (seen on
        this project's 2-core machines; llama.cpp issue 20824), and for one-token decoding on
        a few cores it buys nothing."""
        return [b for b in self._raw_extra_bufts() if C.ggml_backend_buft_name(b) not in UNSAFE_BUFTS]

    def _raw_extra_bufts(self) -> list[int]:
        if self.main != self.cpu:
            return []
        dev = C.ggml_backend_get_device(self.cpu)
        reg = C.ggml_backend_dev_backend_reg(dev)
        addr = C.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if not addr:
            return []
        get_bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
        arr = get_bufts(dev)
        bufts = []
        while arr and arr[len(bufts)]:
            bufts.append(arr[len(bufts)])
        return bufts

    def buft_runs_mul_mat(self, buft, ggml_type: int, shape: tuple[int, ...]) -> bool:
        """Would a mul_mat with a weight of this type and shape, stored in ``buft``, run on the
        CPU? This is how llama.cpp decides where each weight goes."""
        from .graph import new_context  # local: graph imports this module

        ctx = new_context(4)
        dummy = C.ggml_backend_buft_alloc_buffer(buft, 0)
        try:
            w = C.ggml_new_tensor_2d(ctx, ggml_type, shape[0], shape[1])
            tensor_struct(w).buffer = dummy
            x = C.ggml_new_tensor_2d(ctx, S.GGMLType.F32, shape[0], 8)
            op = C.ggml_mul_mat(ctx, w, x)
            return bool(C.ggml_backend_dev_supports_op(C.ggml_backend_get_device(self.cpu), op))
        finally:
            if dummy:
                C.ggml_backend_buffer_free(dummy)
            C.ggml_free(ctx)

    def _scheduler(self, maintenance: bool):
        return self.maintenance_sched if maintenance else self.sched

    def compute(self, graph, maintenance: bool = False) -> None:
        """Compute ``graph``, allocated before by :meth:`alloc_graph` with the same ``maintenance``."""
        status = C.ggml_backend_sched_graph_compute(self._scheduler(maintenance), graph)
        if status != S.GGML_STATUS_SUCCESS:
            raise BackendError(f"graph compute failed with ggml status {status}")

    def alloc_graph(self, graph, maintenance: bool = False) -> None:
        """Place ``graph``'s tensors in the step scheduler's compute buffer (or the maintenance
        one); the graph last placed in that buffer before is invalid afterwards.

        The placement is planned anew for every graph. ggml's allocator reuses its last plan
        for any graph with as many nodes and leaves whose nodes fit their old sizes, without
        looking at how they are wired or which are outputs: a step whose layers read their
        masks in another arrangement (per-layer caches of other lengths) crashed in
        ``ggml_gallocr_alloc_graph``, and an output the old graph let others overwrite read
        back garbage. The engine builds a graph only when its step plan changes, so planning
        costs little."""
        sched = self._scheduler(maintenance)
        C.ggml_backend_sched_reset(sched)
        if not C.ggml_backend_sched_reserve(sched, graph):
            raise BackendError("could not plan the compute graph's memory (out of memory?)")
        if not C.ggml_backend_sched_alloc_graph(sched, graph):
            raise BackendError("could not allocate the compute graph (out of memory?)")

    def compute_buffer_bytes(self) -> int:
        return sum(
            C.ggml_backend_sched_get_buffer_size(s, self.main) for s in (self.sched, self.maintenance_sched)
        )

    def close(self) -> None:
        for name in ("sched", "maintenance_sched"):
            if getattr(self, name, None):
                C.ggml_backend_sched_free(getattr(self, name))
                setattr(self, name, None)
        if getattr(self, "main", None) and self.main != self.cpu:
            C.ggml_backend_free(self.main)
        self.main = None
        if getattr(self, "cpu", None):
            C.ggml_backend_free(self.cpu)
            self.cpu = None

    def __del__(self):
        self.close()

"""IndexMem inside the engine: the trained modules on the backend, and their per-sequence state.

:class:`IndexMemModules` uploads an :class:`~indexmem.convert.reader.IndexMemFile` (checked
against the model before this runs) as float32 backend tensors. :class:`IndexMemState` owns what
the modules need per sequence, in one backend buffer whose size depends only on the cache
capacity: the index-key cache (d_idx floats per slot, compacted with K/V) and each memory
layer's latent state M [d_mem, d_head] and b [d_mem].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..convert import schema as S
from ..convert.reader import IndexMemFile
from ..errors import ModelFormatError
from ..ggml_ops.backend import Backend, OwnsBuffer
from ..ggml_ops.bindings import C
from ..ggml_ops.graph import new_context
from ..ggml_ops.indexmem import IndexerWeights, MemoryWeights
from ..ggml_ops.structs import GGMLType
from .loader import open_gguf
from .registry import MODELS

SIDECAR_DIR = Path(__file__).resolve().parent.parent / "sidecars"  # trained sidecars of registry models


def find_indexmem(model: str, model_path: Path, indexmem) -> tuple[Path | None, dict]:
    """The IndexMem file to use and its defaults (budget, tau, pool_kernel when stored; memory
    when it is the sidecar shipped for a registry model whose entry turns the memory on):
    ``indexmem`` if given (False: none), else the model file itself when the modules are merged
    into it, else the sidecar shipped for a registry model."""
    if indexmem is False:
        return None, {}
    entry = MODELS.get(str(model))
    if indexmem is not None:
        path = Path(indexmem)
        if not path.is_file():
            raise FileNotFoundError(f"IndexMem file {path} does not exist")
    else:
        with open_gguf(model_path) as g:
            merged = g.get(S.K_VERSION) is not None
        if merged:
            path = Path(model_path)
        elif entry is not None and entry.sidecar and (SIDECAR_DIR / entry.sidecar).is_file():
            path = SIDECAR_DIR / entry.sidecar
        else:
            return None, {}
    with open_gguf(path) as g:
        defaults = {"budget": g.get(S.K_BUDGET), "tau": g.get(S.K_TAU), "pool_kernel": g.get(S.K_POOL)}
    if (
        defaults["budget"] is None
    ):  # the converter always writes it; the engine needs it when no budget is given
        raise ModelFormatError(f"{path}: IndexMem key {S.K_BUDGET} is missing")
    for key, value in (
        (S.K_BUDGET, defaults["budget"]),
        (S.K_TAU, defaults["tau"]),
        (S.K_POOL, defaults["pool_kernel"]),
    ):
        if value is not None and S.value_problem(key, value):
            raise ModelFormatError(f"{path}: {S.value_problem(key, value)}")
    defaults["memory"] = int(entry is not None and entry.memory and path == SIDECAR_DIR / entry.sidecar)
    return path, {k: int(v) for k, v in defaults.items() if v is not None}


_SUFFIXES = (
    "idx_q.weight",
    "idx_q_norm.weight",
    "idx_k.weight",
    "idx_k_norm.weight",
    "idx_w.weight",
    "mem_phi.weight",
    "mem_phi.bias",
    "mem_gate.weight",
    "mem_gate.bias",
)


class IndexMemModules(OwnsBuffer):
    """Indexer and memory weights of every layer that has them, as backend tensors."""

    def __init__(self, imf: IndexMemFile, backend: Backend, n_head_kv: int):
        meta, sizes = imf.meta, imf.sizes
        self.path: Path = imf.path
        self.sizes = sizes
        self.layers = list(imf.layers)
        self.memory_layers = S.memory_layers_of(meta, self.layers)
        if not set(self.memory_layers) <= set(self.layers):
            raise ModelFormatError(f"{imf.path}: memory layers {self.memory_layers} lack modules")
        self.norm_eps = float(meta.get(S.K_NORM_EPS, 1e-6))
        self.mem_lambda = float(meta.get(S.K_MEM_LAMBDA, 1.0))
        self.mem_eta = float(meta.get(S.K_MEM_ETA, 1.0))
        self.mem_eps = float(meta.get(S.K_MEM_EPS, 1e-6))
        self.mem_combine = meta.get(S.K_MEM_COMBINE, "add")
        self.sinks = int(meta.get(S.K_SINKS, 4))
        self.default_budget = int(meta.get(S.K_BUDGET, 1024))
        self.default_tau = int(meta.get(S.K_TAU, 16))
        self.group = sizes["n_head"] // n_head_kv  # query heads per KV head
        digest = hashlib.sha256()
        for name in sorted(imf.tensors):
            digest.update(name.encode() + np.ascontiguousarray(imf.tensors[name], dtype=np.float32).tobytes())
        self.fingerprint = digest.hexdigest()  # identifies the module weights (sessions check it)
        self.ctx = new_context(len(self.layers) * len(_SUFFIXES) + 1)
        self.tensors: dict[int, dict[str, int]] = {}
        for il in self.layers:
            self.tensors[il] = {}
            for suffix in _SUFFIXES:
                arr = imf.tensors[S.tensor_name(il, suffix)]
                ne = arr.shape[::-1] if arr.ndim else (1,)
                maker = C.ggml_new_tensor_2d if len(ne) == 2 else C.ggml_new_tensor_1d
                t = maker(self.ctx, GGMLType.F32, *ne)
                C.ggml_set_name(t, S.tensor_name(il, suffix).encode())
                self.tensors[il][suffix] = t
        self.buffer = backend.alloc_ctx_tensors(self.ctx)
        self.nbytes = C.ggml_backend_buffer_get_size(self.buffer)
        for il in self.layers:
            for suffix, t in self.tensors[il].items():
                arr = np.ascontiguousarray(imf.tensors[S.tensor_name(il, suffix)], dtype=np.float32)
                C.ggml_backend_tensor_set(t, arr.ctypes.data, 0, arr.nbytes)

    def indexer(self, il: int) -> IndexerWeights:
        t = self.tensors[il]
        return IndexerWeights(
            q=t["idx_q.weight"],
            q_norm=t["idx_q_norm.weight"],
            k=t["idx_k.weight"],
            k_norm=t["idx_k_norm.weight"],
            w=t["idx_w.weight"],
            n_heads=self.sizes["n_idx_heads"],
            dim=self.sizes["d_idx"],
            norm_eps=self.norm_eps,
        )

    def memory(self, il: int) -> MemoryWeights:
        t = self.tensors[il]
        return MemoryWeights(
            phi=t["mem_phi.weight"],
            phi_bias=t["mem_phi.bias"],
            gate=t["mem_gate.weight"],
            gate_bias=t["mem_gate.bias"],
            eps=self.mem_eps,
            combine=self.mem_combine,
        )


class IndexMemState(OwnsBuffer):
    """Per-sequence state: index keys of the ``index_layers`` ([d_idx, capacity] each) and the
    latent memory of the ``memory_layers``. Both are zero after :meth:`clear`."""

    def __init__(
        self,
        modules: IndexMemModules,
        backend: Backend,
        capacity: int,
        index_layers: list[int],
        memory_layers: list[int],
    ):
        self.modules = modules
        self.index_layers = list(index_layers)
        self.memory_layers = list(memory_layers)
        d_idx, d_mem, d_head = modules.sizes["d_idx"], modules.sizes["d_mem"], modules.sizes["d_head"]
        self.ctx = new_context(len(self.index_layers) + 2 * len(self.memory_layers) + 1)
        self.keys = {
            il: C.ggml_new_tensor_2d(self.ctx, GGMLType.F32, d_idx, capacity) for il in self.index_layers
        }
        self.mem_m = {
            il: C.ggml_new_tensor_2d(self.ctx, GGMLType.F32, d_mem, d_head) for il in self.memory_layers
        }
        self.mem_b = {il: C.ggml_new_tensor_1d(self.ctx, GGMLType.F32, d_mem) for il in self.memory_layers}
        self.buffer = backend.alloc_ctx_tensors(self.ctx) if (self.keys or self.mem_m) else None
        self.memory_used: set[int] = set()  # memory layers written at least once since clear()
        self.clear()

    @property
    def index_bytes(self) -> int:
        return sum(C.ggml_nbytes(t) for t in self.keys.values())

    @property
    def memory_bytes(self) -> int:
        return sum(C.ggml_nbytes(t) for t in (*self.mem_m.values(), *self.mem_b.values()))

    def clear(self) -> None:
        if self.buffer:
            C.ggml_backend_buffer_clear(self.buffer, 0)
        self.memory_used = set()

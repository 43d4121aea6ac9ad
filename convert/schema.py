"""The IndexMem GGUF schema: every key and tensor name, in one place.

The converter writes these and the loader reads them; both import this module, so they cannot
drift apart. A file is either a *sidecar* (only IndexMem keys and tensors) or a *merged* model
(the base model's keys and tensors, unchanged, plus these).

Keys (namespace ``indexmem.``):

| key | type | meaning |
|---|---|---|
| ``indexmem.format_version`` | u32 | schema version (``FORMAT_VERSION``) |
| ``indexmem.base.architecture`` | str | ``general.architecture`` of the base model |
| ``indexmem.base.block_count`` / ``embedding_length`` / ``head_count`` / ``head_count_kv`` / ``key_length`` | u32 | base dimensions |
| ``indexmem.base.fingerprint`` | str | sha256 of the base model's tensor table (names, types, shapes) |
| ``indexmem.base.sha256`` | str | sha256 of the base GGUF file the checkpoint was trained on |
| ``indexmem.layers`` | u32[] | layers that carry an indexer (and memory) |
| ``indexmem.memory_layers`` | u32[] | layers whose latent memory was trained |
| ``indexmem.memory.shut`` | bool | optional: true when no layer carries a memory (a GGUF array cannot be empty), ``indexmem.memory_layers`` then absent |
| ``indexmem.indexer.head_count`` / ``indexmem.indexer.key_length`` | u32 | H_idx, d_idx |
| ``indexmem.memory.length`` | u32 | d_mem |
| ``indexmem.memory.lambda`` / ``eta`` / ``eps`` | f32 | memory write decay, write rate, read epsilon |
| ``indexmem.memory.combine`` | str | optional: how the readout joins attention, ``add`` (o + g·m, the paper's; absent means this) ``mix`` (o + g·(m − o)) or ``share`` (the mix, its gate logit plus log den(q) minus the log-sum-exp of the kept tokens' attention scores) |
| ``indexmem.norm_eps`` | f32 | epsilon of the indexer's RMSNorms |
| ``indexmem.sinks`` / ``indexmem.default_budget`` / ``indexmem.default_tau`` | u32 | eviction defaults |
| ``indexmem.default_pool_kernel`` | u32 | optional: odd width of the max-pool over positions applied to the indexer's scores before the top-B (absent: 1, no pooling) |
| ``indexmem.indexer_from`` | str | optional: sha256 of the IndexMem file whose indexer (weights and pool) this one carries unchanged, when only the memory was retrained; results measured without the memory stay valid across the two |

In a merged model the IndexMem tensors cannot sit in the GGUF tensor table: llama.cpp refuses a
file with tensors it does not expect. There each tensor is stored as metadata instead:
``indexmem.tensor.<name>`` holds its data (float32 array for f32, uint16 array of half-precision
bits for f16, uint8 array of raw blocks for q8_0), ``indexmem.tensor.<name>.type`` its ggml type
and ``indexmem.tensor.<name>.shape`` its ggml shape. llama.cpp ignores keys it does not know, so
the merged file runs in llama.cpp unchanged. A sidecar uses ordinary GGUF tensors.

Tensors per layer N (ggml order: input dimension first):

| tensor | shape | checkpoint parameter |
|---|---|---|
| ``blk.N.idx_q.weight`` | [H·d_head, H_idx·d_idx] | ``indexers.N.U_q.weight`` |
| ``blk.N.idx_q_norm.weight`` | [H_idx·d_idx] | ``indexers.N.q_norm.weight`` |
| ``blk.N.idx_k.weight`` | [d_model, d_idx] | ``indexers.N.U_k.weight`` |
| ``blk.N.idx_k_norm.weight`` | [d_idx] | ``indexers.N.k_norm.weight`` |
| ``blk.N.idx_w.weight`` | [d_model, H_idx] | ``indexers.N.G.weight`` |
| ``blk.N.mem_phi.weight`` / ``.bias`` | [d_head, d_mem] / [d_mem] | ``memories.N.phi.*`` |
| ``blk.N.mem_gate.weight`` / ``.bias`` | [d_head, 1] / [1] | ``memories.N.gate.*`` |
"""

from __future__ import annotations

import hashlib

FORMAT_VERSION = 1
PREFIX = "indexmem."

K_VERSION = "indexmem.format_version"
K_BASE_ARCH = "indexmem.base.architecture"
K_BASE_LAYERS = "indexmem.base.block_count"
K_BASE_EMBD = "indexmem.base.embedding_length"
K_BASE_HEADS = "indexmem.base.head_count"
K_BASE_HEADS_KV = "indexmem.base.head_count_kv"
K_BASE_HEAD_DIM = "indexmem.base.key_length"
K_BASE_FINGERPRINT = "indexmem.base.fingerprint"
K_BASE_SHA256 = "indexmem.base.sha256"
K_LAYERS = "indexmem.layers"
K_MEMORY_LAYERS = "indexmem.memory_layers"
K_IDX_HEADS = "indexmem.indexer.head_count"
K_IDX_DIM = "indexmem.indexer.key_length"
K_MEM_DIM = "indexmem.memory.length"
K_MEM_LAMBDA = "indexmem.memory.lambda"
K_MEM_ETA = "indexmem.memory.eta"
K_MEM_EPS = "indexmem.memory.eps"
K_MEM_COMBINE = "indexmem.memory.combine"
K_MEM_SHUT = "indexmem.memory.shut"
MEM_COMBINES = ("add", "mix", "share")
K_NORM_EPS = "indexmem.norm_eps"
K_SINKS = "indexmem.sinks"
K_BUDGET = "indexmem.default_budget"
K_TAU = "indexmem.default_tau"
K_POOL = "indexmem.default_pool_kernel"
K_INDEXER_FROM = "indexmem.indexer_from"

# what each key must hold: "count" (integer >= 1), "index" (integer >= 0), "float" (finite),
# "eps" (finite, >= 0: ggml's rms_norm aborts on a negative epsilon), "budget" (integer >=
# MIN_DEFAULT_BUDGET), "odd" (odd integer >= 1), "str", "indices" (array of integers >= 0),
# "combine" (one of MEM_COMBINES), "flag" (a bool)
KEY_KINDS = {
    K_VERSION: "index",
    K_BASE_ARCH: "str",
    K_BASE_LAYERS: "count",
    K_BASE_EMBD: "count",
    K_BASE_HEADS: "count",
    K_BASE_HEADS_KV: "count",
    K_BASE_HEAD_DIM: "count",
    K_BASE_FINGERPRINT: "str",
    K_BASE_SHA256: "str",
    K_LAYERS: "indices",
    K_MEMORY_LAYERS: "indices",
    K_IDX_HEADS: "count",
    K_IDX_DIM: "count",
    K_MEM_DIM: "count",
    K_MEM_LAMBDA: "float",
    K_MEM_ETA: "float",
    K_MEM_EPS: "eps",
    K_MEM_COMBINE: "combine",
    K_MEM_SHUT: "flag",
    K_NORM_EPS: "eps",
    K_SINKS: "index",
    K_BUDGET: "budget",
    K_TAU: "count",
    K_POOL: "odd",
    K_INDEXER_FROM: "str",
}


def memory_layers_of(meta: dict, layers) -> list[int]:
    """The layers that carry a latent memory: none in a shut file, all the module layers in a file
    older than ``indexmem.memory_layers``."""
    if meta.get(K_MEM_SHUT):
        return []
    return [int(il) for il in meta.get(K_MEMORY_LAYERS, layers)]


# the engine's default sinks (4) and recent window must fit in a default budget (shipped: 1024)
MIN_DEFAULT_BUDGET = 16


def value_problem(key: str, value) -> str | None:
    """Why ``value`` cannot be the value of ``key`` (None when it can, or the key is not ours)."""
    import math

    import numpy as np

    def integer(v, least):
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    def real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    valid = {
        "count": lambda v: integer(v, 1),
        "index": lambda v: integer(v, 0),
        "budget": lambda v: integer(v, MIN_DEFAULT_BUDGET),
        "odd": lambda v: integer(v, 1) and v % 2 == 1,
        "float": real,
        "eps": lambda v: real(v) and v >= 0,
        "str": lambda v: isinstance(v, str),
        "indices": lambda v: isinstance(v, np.ndarray) and v.dtype.kind in "iu" and bool((v >= 0).all()),
        "combine": lambda v: v in MEM_COMBINES,
        "flag": lambda v: isinstance(v, bool),
    }
    kind = KEY_KINDS.get(key)
    if kind is None or valid[kind](value):
        return None
    shown = f"an array of {len(value)}" if isinstance(value, (list, np.ndarray)) else repr(value)[:40]
    expected = {
        "count": "an integer >= 1",
        "index": "an integer >= 0",
        "budget": f"an integer >= {MIN_DEFAULT_BUDGET}",
        "odd": "an odd integer >= 1",
        "float": "a finite number",
        "eps": "a finite number >= 0",
        "str": "a string",
        "indices": "an array of integers >= 0",
        "combine": ", ".join(MEM_COMBINES[:-1]) + " or " + MEM_COMBINES[-1],
        "flag": "true or false",
    }[kind]
    return f"{key} holds {shown}, expected {expected}"


# tensor suffix -> (checkpoint parameter pattern, is a matrix)
LAYER_TENSORS = {
    "idx_q.weight": ("indexers.{il}.U_q.weight", True),
    "idx_q_norm.weight": ("indexers.{il}.q_norm.weight", False),
    "idx_k.weight": ("indexers.{il}.U_k.weight", True),
    "idx_k_norm.weight": ("indexers.{il}.k_norm.weight", False),
    "idx_w.weight": ("indexers.{il}.G.weight", True),
    "mem_phi.weight": ("memories.{il}.phi.weight", True),
    "mem_phi.bias": ("memories.{il}.phi.bias", False),
    "mem_gate.weight": ("memories.{il}.gate.weight", True),
    "mem_gate.bias": ("memories.{il}.gate.bias", False),
}


K_TENSOR = "indexmem.tensor."  # + tensor name (+ ".type" / ".shape"): merged-model storage


def tensor_name(il: int, suffix: str) -> str:
    return f"blk.{il}.{suffix}"


def expected_shapes(sizes: dict) -> dict[str, tuple[int, ...]]:
    """ggml-order shape of each per-layer tensor for the given module sizes."""
    q_in, q_out = sizes["n_head"] * sizes["d_head"], sizes["n_idx_heads"] * sizes["d_idx"]
    return {
        "idx_q.weight": (q_in, q_out),
        "idx_q_norm.weight": (q_out,),
        "idx_k.weight": (sizes["d_model"], sizes["d_idx"]),
        "idx_k_norm.weight": (sizes["d_idx"],),
        "idx_w.weight": (sizes["d_model"], sizes["n_idx_heads"]),
        "mem_phi.weight": (sizes["d_head"], sizes["d_mem"]),
        "mem_phi.bias": (sizes["d_mem"],),
        "mem_gate.weight": (sizes["d_head"], 1),
        "mem_gate.bias": (1,),
    }


def fingerprint(tensors) -> str:
    """sha256 over the base model's tensor table: (name, ggml type, shape) of every tensor that
    is not IndexMem's own, sorted by name. Cheap (no tensor data read) and changes with any
    re-quantization or architecture change."""
    lines = sorted(
        f"{t.name}:{t.ggml_type}:{','.join(map(str, t.shape))}"
        for t in tensors
        if not any(t.name.endswith("." + s) for s in LAYER_TENSORS)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()

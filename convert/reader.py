"""Read and validate an IndexMem GGUF (sidecar or merged) against the model it is paired with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.loader import open_gguf
from ..errors import ModelFormatError
from ..ggml_ops.structs import GGMLType
from . import schema as S


@dataclass
class IndexMemFile:
    path: Path
    meta: dict
    sizes: dict
    layers: list[int]
    tensors: dict[str, np.ndarray]  # float32, numpy order (as in the checkpoint)


@dataclass
class _MetaTensor:
    """A tensor stored as metadata arrays (merged models, see the schema)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    raw: bytes

    @property
    def type_name(self) -> str:
        return str(self.ggml_type)


def _metadata_tensor(g, name: str):
    data = g.get(S.K_TENSOR + name)
    if data is None:
        return None
    ggml_type, shape = g.get(S.K_TENSOR + name + ".type"), g.get(S.K_TENSOR + name + ".shape")
    if ggml_type is None or shape is None:
        raise ModelFormatError(f"{g.path}: metadata tensor {name} lacks its type or shape")
    if (
        not isinstance(ggml_type, int)
        or not isinstance(shape, np.ndarray)
        or shape.dtype.kind not in "iu"
        or not isinstance(data, np.ndarray)
    ):
        raise ModelFormatError(f"{g.path}: metadata tensor {name} has a malformed type, shape or data")
    return _MetaTensor(name, int(ggml_type), tuple(int(d) for d in shape), data.tobytes())


def _strip(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _dequantize(raw: bytes, info, ggml_shape) -> np.ndarray:
    numpy_shape = tuple(reversed(ggml_shape))
    expected = {
        GGMLType.F32: 4 * int(np.prod(ggml_shape)),
        GGMLType.F16: 2 * int(np.prod(ggml_shape)),
        GGMLType.Q8_0: 34 * int(np.prod(ggml_shape)) // 32,
    }.get(info.ggml_type)
    if expected is not None and len(raw) != expected:
        raise ModelFormatError(f"tensor {info.name} holds {len(raw)} bytes, expected {expected}")
    if info.ggml_type == GGMLType.F32:
        return np.frombuffer(raw, dtype=np.float32).reshape(numpy_shape).copy()
    if info.ggml_type == GGMLType.F16:
        return np.frombuffer(raw, dtype=np.float16).reshape(numpy_shape).astype(np.float32)
    if info.ggml_type == GGMLType.Q8_0:
        import gguf

        data = np.frombuffer(raw, dtype=np.uint8).reshape(numpy_shape[:-1] + (-1,))
        return gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0).reshape(numpy_shape)
    raise ModelFormatError(f"tensor {info.name} has type {info.type_name}, not f32/f16/q8_0")


def memory_layers(path: str | Path) -> list[int]:
    """The layers of an IndexMem file that carry a latent memory, from its metadata alone (no
    tensor is read): ``schema.memory_layers_of``, empty for a file whose memory is shut."""
    with open_gguf(Path(path)) as g:
        meta = {k: g.get(k) for k in (S.K_MEM_SHUT, S.K_MEMORY_LAYERS) if g.get(k) is not None}
        layers = g.get(S.K_LAYERS)
        return S.memory_layers_of(meta, [] if layers is None else layers)


def load_indexmem(path: str | Path, base_path: str | Path | None = None) -> IndexMemFile:
    """Read ``path``; with ``base_path`` (or when ``path`` is a merged model) check the pairing."""
    path = Path(path)
    with open_gguf(path) as g:
        version = g.get(S.K_VERSION)
        if version is None:
            raise ModelFormatError(f"{path}: no IndexMem modules in this GGUF ({S.K_VERSION} missing)")
        meta = {k: g.get(k) for k in g.keys() if k.startswith(S.PREFIX)}
        problems = [p for p in (S.value_problem(k, v) for k, v in meta.items()) if p]
        if problems:
            raise ModelFormatError(f"{path}: invalid IndexMem metadata: {'; '.join(problems)}")
        if version != S.FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: IndexMem format version {version} is not supported "
                f"(this indexmem reads version {S.FORMAT_VERSION})"
            )
        required = [
            S.K_BASE_ARCH,
            S.K_BASE_LAYERS,
            S.K_BASE_EMBD,
            S.K_BASE_HEADS,
            S.K_BASE_HEAD_DIM,
            S.K_BASE_FINGERPRINT,
            S.K_LAYERS,
            S.K_IDX_HEADS,
            S.K_IDX_DIM,
            S.K_MEM_DIM,
        ]
        absent = [k for k in required if k not in meta]
        if absent:
            raise ModelFormatError(f"{path}: IndexMem keys missing: {absent}")
        sizes = dict(
            d_model=int(meta[S.K_BASE_EMBD]),
            n_head=int(meta[S.K_BASE_HEADS]),
            d_head=int(meta[S.K_BASE_HEAD_DIM]),
            n_idx_heads=int(meta[S.K_IDX_HEADS]),
            d_idx=int(meta[S.K_IDX_DIM]),
            d_mem=int(meta[S.K_MEM_DIM]),
        )
        layers = [int(x) for x in meta[S.K_LAYERS]]
        if any(not 0 <= il < int(meta[S.K_BASE_LAYERS]) for il in layers):
            raise ModelFormatError(f"{path}: layer list {layers} does not fit {meta[S.K_BASE_LAYERS]} layers")
        shapes = S.expected_shapes(sizes)
        tensors = {}
        with open(path, "rb") as f:
            for il in layers:
                for suffix, shape in shapes.items():
                    name = S.tensor_name(il, suffix)
                    info = g.tensors.get(name) or _metadata_tensor(g, name)
                    if info is None:
                        raise ModelFormatError(f"{path}: tensor {name} is missing")
                    if _strip(info.shape) != _strip(shape):
                        raise ModelFormatError(
                            f"{path}: tensor {name} has shape {list(info.shape)}, expected {list(shape)}"
                        )
                    if isinstance(info, _MetaTensor):
                        raw = info.raw
                    else:
                        f.seek(info.offset)
                        raw = f.read(info.nbytes)
                    try:
                        tensors[name] = _dequantize(raw, info, shape)
                    except ModelFormatError as exc:
                        raise ModelFormatError(f"{path}: {exc}") from exc
        merged_fp = S.fingerprint(g.tensors.values()) if g.get("general.architecture") != "indexmem" else None
    if merged_fp is not None and merged_fp != meta[S.K_BASE_FINGERPRINT]:
        raise ModelFormatError(
            f"{path}: the model tensors do not match the fingerprint the IndexMem modules were converted for"
        )
    if base_path is not None:
        try:
            check_pairing(meta, Path(base_path))
        except ModelFormatError as exc:
            raise ModelFormatError(f"{path}: {exc}") from exc
    return IndexMemFile(path=path, meta=meta, sizes=sizes, layers=layers, tensors=tensors)


def check_pairing(meta: dict, base_path: Path) -> None:
    """Refuse a sidecar converted for another model, naming what differs."""
    from ..engine.hparams import read_hparams

    with open_gguf(base_path) as base:
        hp = read_hparams(base)
        fp = S.fingerprint(base.tensors.values())
    for key, ours in (
        (S.K_BASE_ARCH, hp.arch),
        (S.K_BASE_LAYERS, hp.n_layer),
        (S.K_BASE_EMBD, hp.n_embd),
        (S.K_BASE_HEADS, hp.n_head),
        (S.K_BASE_HEAD_DIM, hp.head_dim),
    ):
        if meta[key] != ours:
            raise ModelFormatError(
                f"IndexMem file is for a model with {key.split('.')[-1]} "
                f"{meta[key]}, but {base_path} has {ours}"
            )
    if meta[S.K_BASE_FINGERPRINT] != fp:
        raise ModelFormatError(
            f"IndexMem file was converted for a different model than {base_path} "
            f"(tensor fingerprint differs: another quantization or checkpoint)"
        )

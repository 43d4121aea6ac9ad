"""Model hyper-parameters read from GGUF metadata, with llama.cpp's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFormatError
from ..ggml_ops.gguf_reader import GGUFFile
from .vocabulary import check_vocabulary


@dataclass(frozen=True)
class HParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_scale: float  # multiplier on positions (1 / scaling factor)
    n_rot: int
    # sliding-window attention (Gemma 3): per-layer flag and window length
    swa_layers: tuple[bool, ...] = field(default_factory=tuple)
    sliding_window: int = 0
    rope_base_swa: float = 10000.0
    final_logit_softcap: float = 0.0
    name: str = ""

    @property
    def n_embd_q(self) -> int:
        return self.head_dim * self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]


_REQUIRED = object()


def _value(gguf: GGUFFile, key: str, default, kind: str):
    """The value of ``key`` if it is of ``kind`` (int, float, str), else a ModelFormatError naming
    the key: a file is data, and a string where a count belongs must not reach int()."""
    value = gguf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ModelFormatError(f"{gguf.path}: required metadata key {key!r} is missing")
        return default
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (
        kind == "float"
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    raise ModelFormatError(
        f"{gguf.path}: metadata key {key!r} holds {_describe(value)}, expected {kind}"
        + (" (finite)" if kind == "float" else "")
    )


def _describe(value) -> str:
    if isinstance(value, (list, np.ndarray)):
        return f"an array of {len(value)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _per_layer_scalar(gguf: GGUFFile, key: str, n_layer: int) -> int:
    """Head counts may be stored per layer as an array; we need them uniform."""
    value = gguf.get(key)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and len(value) == n_layer:
        values = set(int(v) for v in value)
        if len(values) != 1:
            raise ModelFormatError(f"{gguf.path}: per-layer {key} ({sorted(values)}) is not supported")
        return values.pop()
    if isinstance(value, (np.ndarray, list)):
        raise ModelFormatError(
            f"{gguf.path}: per-layer {key} has {_describe(value)}, expected {n_layer} integers"
        )
    return _value(gguf, key, _REQUIRED, "int")


def _swa_layers(gguf: GGUFFile, arch: str, n_layer: int, default_pattern: int) -> tuple[bool, ...]:
    window = _value(gguf, f"{arch}.attention.sliding_window", 0, "int")
    if window <= 0:
        return ()
    key = f"{arch}.attention.sliding_window_pattern"
    pattern = gguf.get(key, default_pattern)
    if isinstance(pattern, (np.ndarray, list)):
        if len(pattern) != n_layer or isinstance(pattern, list):
            raise ModelFormatError(
                f"{gguf.path}: sliding_window_pattern has {_describe(pattern)} for {n_layer} layers"
            )
        return tuple(bool(p) for p in pattern)
    pattern = _value(gguf, key, default_pattern, "int")
    if pattern < 0:
        raise ModelFormatError(f"{gguf.path}: sliding_window_pattern {pattern} is negative")
    return tuple(pattern == 0 or (il % pattern < pattern - 1) for il in range(n_layer))


def read_hparams(gguf: GGUFFile, swa_default_pattern: int = 0) -> HParams:
    arch = _value(gguf, "general.architecture", _REQUIRED, "str")
    n_layer = _value(gguf, f"{arch}.block_count", _REQUIRED, "int")
    # every layer has tensors: more layers than tensors is a corrupt count (and would make the
    # tensor list below as long as the count says)
    if not 0 < n_layer <= len(gguf.tensors):
        raise ModelFormatError(
            f"{gguf.path}: block count {n_layer} does not fit the file's {len(gguf.tensors)} tensors"
        )
    n_embd = _value(gguf, f"{arch}.embedding_length", _REQUIRED, "int")
    n_head = _per_layer_scalar(gguf, f"{arch}.attention.head_count", n_layer)
    n_head_kv = _value(gguf, f"{arch}.attention.head_count_kv", n_head, "int")
    if n_embd <= 0 or n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise ModelFormatError(
            f"{gguf.path}: inconsistent sizes (layers {n_layer}, embd {n_embd}, heads {n_head}/{n_head_kv})"
        )
    head_dim = _value(gguf, f"{arch}.attention.key_length", n_embd // n_head, "int")
    value_dim = _value(gguf, f"{arch}.attention.value_length", head_dim, "int")
    if value_dim != head_dim:
        raise ModelFormatError(f"{gguf.path}: key length {head_dim} != value length {value_dim}")
    if head_dim <= 0:
        raise ModelFormatError(f"{gguf.path}: key length {head_dim} is not positive")
    n_rot = _value(gguf, f"{arch}.rope.dimension_count", head_dim, "int")
    if not 0 < n_rot <= head_dim or n_rot % 2:  # ggml's rope aborts on these (and never returns on 0)
        raise ModelFormatError(f"{gguf.path}: rope dimension count {n_rot} does not fit heads of {head_dim}")
    n_vocab = _value(gguf, f"{arch}.vocab_size", 0, "int") or gguf.array_length("tokenizer.ggml.tokens")
    scaling = _value(gguf, f"{arch}.rope.scaling.factor", 0.0, "float") or _value(
        gguf, f"{arch}.rope.scale_linear", 0.0, "float"
    )
    scaling_type = _value(gguf, f"{arch}.rope.scaling.type", "linear", "str")
    if scaling_type not in ("linear", "none"):
        raise ModelFormatError(f"{gguf.path}: rope scaling type {scaling_type!r} is not supported")
    n_ctx_train = _value(gguf, f"{arch}.context_length", 2048, "int")
    if n_ctx_train <= 0:
        raise ModelFormatError(f"{gguf.path}: context length {n_ctx_train} is not positive")
    check_vocabulary(gguf)  # before llama.cpp loads it for the tokenizer
    rms_eps = _value(gguf, f"{arch}.attention.layer_norm_rms_epsilon", _REQUIRED, "float")
    if rms_eps < 0:  # ggml's rms_norm aborts the process on a negative epsilon
        raise ModelFormatError(f"{gguf.path}: RMS norm epsilon {rms_eps} is negative")
    swa_layers = _swa_layers(gguf, arch, n_layer, swa_default_pattern)
    return HParams(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=_per_layer_scalar(gguf, f"{arch}.feed_forward_length", n_layer),
        n_vocab=n_vocab,
        n_ctx_train=n_ctx_train,
        rms_eps=rms_eps,
        rope_base=_value(gguf, f"{arch}.rope.freq_base", 10000.0, "float"),
        rope_scale=1.0 / scaling if scaling and scaling_type == "linear" else 1.0,
        n_rot=n_rot,
        swa_layers=swa_layers,
        sliding_window=_value(gguf, f"{arch}.attention.sliding_window", 0, "int") if swa_layers else 0,
        rope_base_swa=_value(gguf, f"{arch}.rope.freq_base_swa", 10000.0, "float"),
        final_logit_softcap=_value(gguf, f"{arch}.final_logit_softcapping", 0.0, "float"),
        name=str(gguf.get("general.name", "")),
    )

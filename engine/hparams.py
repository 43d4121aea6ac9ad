"""Model hyper-parameters read from GGUF metadata, with llama.cpp's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelFormatError
from ..ggml_ops.gguf_reader import GGUFFile


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


def _required(gguf: GGUFFile, key: str):
    value = gguf.get(key)
    if value is None:
        raise ModelFormatError(f"{gguf.path}: required metadata key {key!r} is missing")
    return value


def _per_layer_scalar(gguf: GGUFFile, key: str, n_layer: int):
    """Head counts may be stored per layer as an array; we need them uniform."""
    value = _required(gguf, key)
    if hasattr(value, "__len__"):
        values = set(int(v) for v in value)
        if len(values) != 1:
            raise ModelFormatError(f"{gguf.path}: per-layer {key} ({sorted(values)}) is not supported")
        return values.pop()
    return int(value)


def _swa_layers(gguf: GGUFFile, arch: str, n_layer: int, default_pattern: int) -> tuple[bool, ...]:
    window = int(gguf.get(f"{arch}.attention.sliding_window", 0) or 0)
    if window <= 0:
        return ()
    pattern = gguf.get(f"{arch}.attention.sliding_window_pattern", default_pattern)
    if hasattr(pattern, "__len__"):
        if len(pattern) != n_layer:
            raise ModelFormatError(f"{gguf.path}: sliding_window_pattern has {len(pattern)} entries "
                                   f"for {n_layer} layers")
        return tuple(bool(p) for p in pattern)
    pattern = int(pattern)
    return tuple(pattern == 0 or (il % pattern < pattern - 1) for il in range(n_layer))


def read_hparams(gguf: GGUFFile, swa_default_pattern: int = 0) -> HParams:
    arch = str(_required(gguf, "general.architecture"))
    n_layer = int(_required(gguf, f"{arch}.block_count"))
    n_embd = int(_required(gguf, f"{arch}.embedding_length"))
    n_head = _per_layer_scalar(gguf, f"{arch}.attention.head_count", n_layer)
    n_head_kv = int(gguf.get(f"{arch}.attention.head_count_kv", n_head))
    if n_layer <= 0 or n_embd <= 0 or n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise ModelFormatError(f"{gguf.path}: inconsistent sizes (layers {n_layer}, embd {n_embd}, "
                               f"heads {n_head}/{n_head_kv})")
    head_dim = int(gguf.get(f"{arch}.attention.key_length", n_embd // n_head))
    value_dim = int(gguf.get(f"{arch}.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise ModelFormatError(f"{gguf.path}: key length {head_dim} != value length {value_dim}")
    n_vocab = int(gguf.get(f"{arch}.vocab_size", 0) or gguf.array_length("tokenizer.ggml.tokens"))
    scaling = gguf.get(f"{arch}.rope.scaling.factor", 0.0) or gguf.get(f"{arch}.rope.scale_linear", 0.0)
    scaling_type = gguf.get(f"{arch}.rope.scaling.type", "linear")
    if scaling_type not in ("linear", "none"):
        raise ModelFormatError(f"{gguf.path}: rope scaling type {scaling_type!r} is not supported")
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
        n_ctx_train=int(gguf.get(f"{arch}.context_length", 2048)),
        rms_eps=float(_required(gguf, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_base=float(gguf.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scale=1.0 / float(scaling) if scaling and scaling_type == "linear" else 1.0,
        n_rot=int(gguf.get(f"{arch}.rope.dimension_count", head_dim)),
        swa_layers=swa_layers,
        sliding_window=int(gguf.get(f"{arch}.attention.sliding_window", 0) or 0) if swa_layers else 0,
        rope_base_swa=float(gguf.get(f"{arch}.rope.freq_base_swa", 10000.0)),
        final_logit_softcap=float(gguf.get(f"{arch}.final_logit_softcapping", 0.0) or 0.0),
        name=str(gguf.get("general.name", "")),
    )

"""What every architecture file provides: its tensor list and its per-step graph."""

from __future__ import annotations

import math

from ...ggml_ops.bindings import C
from ..hparams import HParams
from ..loader import TensorSpec


class DecoderModel:
    """A decoder-only transformer. Subclasses set ``arch`` and implement ``build``."""

    arch: str = ""
    rope_type: int = 0
    swa_default_pattern: int = 0  # for sliding-window models: every n-th layer is global

    def __init__(self, hp: HParams):
        self.hp = hp
        self.weights = None  # set by the engine once the tensors are loaded

    # --- tensors -----------------------------------------------------------------------
    def tensor_specs(self) -> list[TensorSpec]:
        hp = self.hp
        specs = [
            TensorSpec("token_embd.weight", (hp.n_embd, hp.n_vocab)),
            TensorSpec("output_norm.weight", (hp.n_embd,)),
            TensorSpec("output.weight", (hp.n_embd, hp.n_vocab), required=False),
        ]
        for il in range(hp.n_layer):
            specs += [
                TensorSpec(f"blk.{il}.{name}", shape, required)
                for name, shape, required in self.layer_tensors()
            ]
        return specs

    def layer_tensors(self) -> list[tuple[str, tuple[int, ...], bool]]:
        """The standard attention + gated FFN tensors; architectures add their own."""
        hp = self.hp
        return [
            ("attn_norm.weight", (hp.n_embd,), True),
            ("attn_q.weight", (hp.n_embd, hp.n_embd_q), True),
            ("attn_k.weight", (hp.n_embd, hp.n_embd_kv), True),
            ("attn_v.weight", (hp.n_embd, hp.n_embd_kv), True),
            ("attn_output.weight", (hp.n_embd_q, hp.n_embd), True),
            ("ffn_norm.weight", (hp.n_embd,), True),
            ("ffn_gate.weight", (hp.n_embd, hp.n_ff), True),
            ("ffn_up.weight", (hp.n_embd, hp.n_ff), True),
            ("ffn_down.weight", (hp.n_ff, hp.n_embd), True),
        ]

    # --- graph -------------------------------------------------------------------------
    def layer_window(self, il: int) -> int:
        """Sliding window of layer ``il`` (0: full causal attention)."""
        return self.hp.sliding_window if self.hp.is_swa(il) else 0

    def rope_args(self, il: int) -> tuple[int, float, float, str | None]:
        """RoPE of layer ``il``: (mode, frequency base, frequency scale, name of a frequency
        factors tensor or None)."""
        return self.rope_type, self.hp.rope_base, self.hp.rope_scale, None

    def rope(self, ctx, x, il: int, pos):
        """Rotate x [head_dim, heads, T] by RoPE at positions ``pos`` [T] (I32)."""
        hp = self.hp
        mode, base, scale, factors = self.rope_args(il)
        factors = self.weights.get(factors) if factors else None
        return C.ggml_rope_ext(
            ctx, x, pos, factors, hp.n_rot, mode, hp.n_ctx_train, base, scale, 0.0, 1.0, 32.0, 1.0
        )

    def qk_logit_scale(self) -> float:
        """The factor between ``Qcur . Kcur`` and the attention logit (1/sqrt(head_dim), unless
        the model scales its queries before naming them ``Qcur``)."""
        return 1.0 / math.sqrt(self.hp.head_dim)

    def build(self, b):
        raise NotImplementedError

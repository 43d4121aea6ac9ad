"""Llama (SmolLM2, Llama 2/3, Mistral): RMSNorm, RoPE (normal), GQA attention, SwiGLU FFN.
Reference: llama.cpp src/models/llama.cpp."""

from __future__ import annotations

import math

from ...ggml_ops.bindings import C
from ...ggml_ops.structs import ROPE_TYPE_NORMAL
from ..loader import TensorSpec
from .base import DecoderModel


class LlamaModel(DecoderModel):
    arch = "llama"
    rope_type = ROPE_TYPE_NORMAL

    def tensor_specs(self):
        # Llama 3 long-context frequency factors, one tensor shared by all layers
        return super().tensor_specs() + [TensorSpec("rope_freqs.weight", (self.hp.n_rot // 2,), False)]

    def rope_args(self, il):
        return self.rope_type, self.hp.rope_base, self.hp.rope_scale, "rope_freqs.weight"

    def build(self, b):
        hp, ctx = self.hp, b.ctx
        kq_scale = 1.0 / math.sqrt(hp.head_dim)
        x = b.embed()
        for il in range(hp.n_layer):
            cur = b.norm(x, b.lw(il, "attn_norm.weight"), "attn_norm", il)
            q, k, v = b.qkv(cur, il)
            b.cb(q, "Qpre", il)
            b.cb(k, "Kpre", il)
            q = b.cb(b.rope(q, il), "Qcur", il)
            k = b.cb(b.rope(k, il), "Kcur", il)
            cur = b.attention(il, q, k, v, kq_scale)
            cur = b.linear(b.lw(il, "attn_output.weight"), cur, b.lw(il, "attn_output.bias"))
            if il == hp.n_layer - 1:
                cur, x = b.select_outputs(cur, x)
            ffn_inp = C.ggml_add(ctx, cur, x)
            cur = b.norm(ffn_inp, b.lw(il, "ffn_norm.weight"), "ffn_norm", il)
            cur = b.ffn_gated(cur, il, "silu")
            x = b.cb(C.ggml_add(ctx, cur, ffn_inp), "l_out", il)
        return b.finish(b.logits(x))

"""Qwen3: the llama layout with per-head RMSNorm on Q and K before NEOX RoPE.
Reference: llama.cpp src/models/qwen3.cpp."""

from __future__ import annotations

import math

from ...ggml_ops.bindings import C
from ...ggml_ops.structs import ROPE_TYPE_NEOX
from .base import DecoderModel


class Qwen3Model(DecoderModel):
    arch = "qwen3"
    rope_type = ROPE_TYPE_NEOX

    def layer_tensors(self):
        hp = self.hp
        return super().layer_tensors() + [
            ("attn_q_norm.weight", (hp.head_dim,), True),
            ("attn_k_norm.weight", (hp.head_dim,), True),
        ]

    def build(self, b):
        hp, ctx = self.hp, b.ctx
        x = b.embed()
        for il in range(hp.n_layer):
            cur = b.norm(x, b.lw(il, "attn_norm.weight"), "attn_norm", il)
            q, k, v = b.qkv(cur, il)
            q = b.norm(q, b.lw(il, "attn_q_norm.weight"), "Qpre", il)
            k = b.norm(k, b.lw(il, "attn_k_norm.weight"), "Kpre", il)
            q = b.cb(b.rope(q, il), "Qcur", il)
            k = b.cb(b.rope(k, il), "Kcur", il)
            cur = b.attention(il, q, k, v, 1.0 / math.sqrt(hp.head_dim))
            cur = b.linear(b.lw(il, "attn_output.weight"), cur)
            if il == hp.n_layer - 1:
                cur, x = b.select_outputs(cur, x)
            ffn_inp = C.ggml_add(ctx, cur, x)
            cur = b.norm(ffn_inp, b.lw(il, "ffn_norm.weight"), "ffn_norm", il)
            cur = b.ffn_gated(cur, il, "silu")
            x = b.cb(C.ggml_add(ctx, cur, ffn_inp), "l_out", il)
        return b.finish(b.logits(x))

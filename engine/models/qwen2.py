"""Qwen2 / Qwen2.5: the llama layout with Q/K/V biases and NEOX RoPE.
Reference: llama.cpp src/models/qwen2.cpp."""

from __future__ import annotations

import math

from ...ggml_ops.bindings import C
from ...ggml_ops.structs import ROPE_TYPE_NEOX
from ..loader import TensorSpec
from .base import DecoderModel


class Qwen2Model(DecoderModel):
    arch = "qwen2"
    rope_type = ROPE_TYPE_NEOX

    def tensor_specs(self):
        return super().tensor_specs() + [TensorSpec("output.bias", (self.hp.n_vocab,), False)]

    def layer_tensors(self):
        hp = self.hp
        return super().layer_tensors() + [
            ("attn_q.bias", (hp.n_embd_q,), True),
            ("attn_k.bias", (hp.n_embd_kv,), True),
            ("attn_v.bias", (hp.n_embd_kv,), True),
        ]

    def build(self, b):
        hp, ctx = self.hp, b.ctx
        x = b.embed()
        for il in range(hp.n_layer):
            cur = b.norm(x, b.lw(il, "attn_norm.weight"), "attn_norm", il)
            q, k, v = b.qkv(cur, il)
            b.cb(q, "Qpre", il)
            b.cb(k, "Kpre", il)
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
        logits = b.logits(x)
        if b.w.get("output.bias"):
            logits = b.cb(C.ggml_add(ctx, logits, b.w["output.bias"]), "result_output_b")
        return b.finish(logits)

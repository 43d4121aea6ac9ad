"""Gemma 3: scaled embeddings, QK-norm, sliding-window attention on 5 of every 6 layers
(local RoPE base 10000), post-attention and post-FFN norms, GELU-gated FFN, tied output.
Reference: llama.cpp src/models/gemma3.cpp."""

from __future__ import annotations

import math

from ...ggml_ops.bindings import C
from ...ggml_ops.structs import ROPE_TYPE_NEOX
from .base import DecoderModel


class Gemma3Model(DecoderModel):
    arch = "gemma3"
    rope_type = ROPE_TYPE_NEOX
    swa_default_pattern = 6

    def layer_tensors(self):
        hp = self.hp
        return super().layer_tensors() + [
            ("attn_q_norm.weight", (hp.head_dim,), True),
            ("attn_k_norm.weight", (hp.head_dim,), True),
            ("post_attention_norm.weight", (hp.n_embd,), True),
            ("post_ffw_norm.weight", (hp.n_embd,), True),
        ]

    def rope_args(self, il):
        hp = self.hp
        if hp.is_swa(il):  # local layers: their own base, no scaling
            return self.rope_type, hp.rope_base_swa, 1.0, None
        return self.rope_type, hp.rope_base, hp.rope_scale, None

    def qk_logit_scale(self) -> float:
        return 1.0  # Qcur is already scaled by 1/sqrt(query_pre_attn_scalar)

    def build(self, b):
        hp, ctx = self.hp, b.ctx
        q_scale = 1.0 / math.sqrt(hp.head_dim)
        x = b.cb(C.ggml_scale(ctx, b.embed(), math.sqrt(hp.n_embd)), "inp_scaled")
        for il in range(hp.n_layer):
            cur = b.norm(x, b.lw(il, "attn_norm.weight"), "attn_norm", il)
            q, k, v = b.qkv(cur, il)
            q = b.norm(q, b.lw(il, "attn_q_norm.weight"), "Qpre", il)
            k = b.norm(k, b.lw(il, "attn_k_norm.weight"), "Kpre", il)
            q = b.rope(q, il)
            k = b.cb(b.rope(k, il), "Kcur", il)
            q = b.cb(C.ggml_scale(ctx, q, q_scale), "Qcur", il)
            cur = b.attention(il, q, k, v, 1.0)
            cur = b.linear(b.lw(il, "attn_output.weight"), cur)
            if il == hp.n_layer - 1:
                cur, x = b.select_outputs(cur, x)
            cur = b.norm(cur, b.lw(il, "post_attention_norm.weight"), "attn_post_norm", il)
            sa_out = b.cb(C.ggml_add(ctx, cur, x), "sa_out", il)
            cur = b.norm(sa_out, b.lw(il, "ffn_norm.weight"), "ffn_norm", il)
            cur = b.ffn_gated(cur, il, "gelu")
            cur = b.norm(cur, b.lw(il, "post_ffw_norm.weight"), "ffn_post_norm", il)
            x = b.cb(C.ggml_add(ctx, cur, sa_out), "l_out", il)
        return b.finish(b.logits(x, hp.final_logit_softcap))

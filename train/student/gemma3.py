"""Gemma 3 in the student (engine/models/gemma3.py): scaled embeddings, QK-norm, queries
pre-scaled, sliding-window local layers with their own RoPE base, post-attention and post-FFN
norms, GELU-gated FFN, soft-capped tied output."""

from __future__ import annotations

import math

import torch.nn.functional as F

from .blocks import Architecture, rms_norm


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


class Gemma3(Architecture):
    arch = "gemma3"
    neox = True

    def rope_args(self, il):
        if self.hp.is_swa(il):
            return self.hp.rope_base_swa, 1.0, None
        return self.hp.rope_base, self.hp.rope_scale, None

    def embed(self, tokens):
        return super().embed(tokens) * math.sqrt(self.hp.n_embd)

    def layer(self, run, il, h):
        hp = self.hp
        x = self.norm(h, il, "attn_norm")
        q, k, v = self.qkv(x, il)
        q = rms_norm(q, self.lw(il, "attn_q_norm.weight"), hp.rms_eps)
        k = rms_norm(k, self.lw(il, "attn_k_norm.weight"), hp.rms_eps)
        o = run.attention(il, x, q, k, v, q_scale=1.0 / math.sqrt(hp.head_dim), kq_scale=1.0)
        sa = h + self.norm(self.linear(o, il, "attn_output"), il, "post_attention_norm")
        ffn = self.ffn(self.norm(sa, il, "ffn_norm"), il, gelu_tanh)
        return sa + self.norm(ffn, il, "post_ffw_norm")

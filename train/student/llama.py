"""Llama (SmolLM2, Llama, Mistral) in the student: engine/models/llama.py's layer in torch."""

from __future__ import annotations

import torch.nn.functional as F

from .blocks import Architecture, default_kq_scale


class Llama(Architecture):
    arch = "llama"

    def rope_args(self, il):
        return self.hp.rope_base, self.hp.rope_scale, self.w.get("rope_freqs.weight")

    def layer(self, run, il, h):
        x = self.norm(h, il, "attn_norm")
        q, k, v = self.qkv(x, il)
        o = run.attention(il, x, q, k, v, q_scale=1.0, kq_scale=default_kq_scale(self.hp))
        h = h + self.linear(o, il, "attn_output")
        return h + self.ffn(self.norm(h, il, "ffn_norm"), il, F.silu)

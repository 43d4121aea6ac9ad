"""Qwen3 in the student: per-head RMSNorm on Q and K before NEOX RoPE (engine/models/qwen3.py)."""

from __future__ import annotations

import torch.nn.functional as F

from .blocks import Architecture, default_kq_scale, rms_norm


class Qwen3(Architecture):
    arch = "qwen3"
    neox = True

    def layer(self, run, il, h):
        x = self.norm(h, il, "attn_norm")
        q, k, v = self.qkv(x, il)
        q = rms_norm(q, self.lw(il, "attn_q_norm.weight"), self.hp.rms_eps)
        k = rms_norm(k, self.lw(il, "attn_k_norm.weight"), self.hp.rms_eps)
        o = run.attention(il, x, q, k, v, q_scale=1.0, kq_scale=default_kq_scale(self.hp))
        h = h + self.linear(o, il, "attn_output")
        return h + self.ffn(self.norm(h, il, "ffn_norm"), il, F.silu)

"""The backbone pieces every architecture of the student shares, in float32 torch, written from
the same equations as the engine's graph blocks (``engine/models/builder.py``).

Shapes: tokens along the first axis; per-head tensors are [T, heads, head_dim].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...engine.hparams import HParams
from ..losses import masked_scores
from .activations import activation_kind, round_activations
from .frozen_matmul import frozen_matmul


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return out * weight if weight is not None else out


def rope(
    x: torch.Tensor,
    pos: torch.Tensor,
    n_rot: int,
    base: float,
    scale: float,
    neox: bool,
    factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate the first ``n_rot`` dims of x [T, heads, d] by positions ``pos`` [T] (negative
    positions undo the rotation), as ggml_rope_ext does without YaRN: pairs are adjacent
    (normal) or split in halves (NEOX); ``scale`` multiplies positions, ``factors`` divide the
    frequencies (Llama 3's long-context factors)."""
    half = n_rot // 2
    inv_freq = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / n_rot)
    if factors is not None:
        inv_freq = inv_freq / factors.to(torch.float64)
    theta = (pos.to(torch.float64) * scale)[:, None] * inv_freq[None, :]
    cos = torch.cos(theta).to(x.dtype)[:, None, :]
    sin = torch.sin(theta).to(x.dtype)[:, None, :]
    rot, rest = x[..., :n_rot], x[..., n_rot:]
    if neox:
        x0, x1 = rot[..., :half], rot[..., half:]
        out = torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    else:
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def to_f16(x: torch.Tensor) -> torch.Tensor:
    """Rounded as the engine's float16 KV cache stores it."""
    return x.to(torch.float16).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float):
    """Softmax attention of q [T, H, d] over k, v [n, H_kv, d] (grouped heads shared) where
    ``visible`` [T, n]: [T, H*d]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=visible,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.transpose(0, 1).flatten(1)


def kept_lse(q: torch.Tensor, k: torch.Tensor, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """log Σ exp(scale · q·k) over the visible keys, per query and head: [T, H] (no gradient: it
    only tells the "share" gate how much attention the kept tokens hold)."""
    with torch.no_grad():
        return torch.logsumexp(masked_scores(q, k, visible, scale), -1).transpose(0, 1)


def visible_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int = 0) -> torch.Tensor:
    """[T, n]: key visible to query (causal, and within ``window`` positions when > 0)."""
    diff = query_pos[:, None] - key_pos[None, :]
    visible = diff >= 0
    if window > 0:
        visible &= diff < window
    return visible


class Architecture:
    """One architecture's frozen backbone: its weights, and the per-layer computation around
    the cached attention that :class:`~indexmem.train.student.model.Student` owns."""

    arch = ""
    neox = False

    def __init__(self, hp: HParams, weights: dict[str, torch.Tensor], types: dict[str, int] | None = None):
        """``types``: each weight's ggml type as stored, so products round their activations as
        ggml's do (None: float32 products throughout)."""
        self.hp, self.w = hp, weights
        self.act = {name: activation_kind(t) for name, t in (types or {}).items()}
        for t in weights.values():
            t.requires_grad_(False)

    def matmul(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return frozen_matmul(round_activations(x, self.act.get(name)), self.w[name])

    def lw(self, il: int, name: str) -> torch.Tensor | None:
        return self.w.get(f"blk.{il}.{name}")

    def linear(self, x: torch.Tensor, il: int, name: str) -> torch.Tensor:
        out = self.matmul(x, f"blk.{il}.{name}.weight")
        bias = self.lw(il, f"{name}.bias")
        return out + bias if bias is not None else out

    def norm(self, x: torch.Tensor, il: int, name: str) -> torch.Tensor:
        return rms_norm(x, self.lw(il, f"{name}.weight"), self.hp.rms_eps)

    def qkv(self, x: torch.Tensor, il: int):
        hp, n = self.hp, x.shape[0]
        q = self.linear(x, il, "attn_q").view(n, hp.n_head, hp.head_dim)
        k = self.linear(x, il, "attn_k").view(n, hp.n_head_kv, hp.head_dim)
        v = self.linear(x, il, "attn_v").view(n, hp.n_head_kv, hp.head_dim)
        return q, k, v

    def ffn(self, x: torch.Tensor, il: int, act) -> torch.Tensor:
        gate = act(self.linear(x, il, "ffn_gate"))
        return self.linear(gate * self.linear(x, il, "ffn_up"), il, "ffn_down")

    # --- what architectures set --------------------------------------------------------
    def rope_args(self, il: int) -> tuple[float, float, torch.Tensor | None]:
        """(frequency base, position scale, frequency factors) of layer ``il``."""
        return self.hp.rope_base, self.hp.rope_scale, None

    def rope(self, x: torch.Tensor, il: int, pos: torch.Tensor) -> torch.Tensor:
        base, scale, factors = self.rope_args(il)
        return rope(x, pos, self.hp.n_rot, base, scale, self.neox, factors)

    def layer_window(self, il: int) -> int:
        return self.hp.sliding_window if self.hp.is_swa(il) else 0

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.w["token_embd.weight"][tokens].float()

    def layer(self, run, il: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``il`` on hidden states h [T, d_model]; attention goes through
        ``run.attention(il, x, q_pre, k_pre, v, q_scale, kq_scale)``."""
        raise NotImplementedError

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = rms_norm(h, self.w["output_norm.weight"], self.hp.rms_eps)
        out = self.matmul(h, "output.weight" if "output.weight" in self.w else "token_embd.weight")
        if self.hp.final_logit_softcap:
            cap = self.hp.final_logit_softcap
            out = torch.tanh(out / cap) * cap
        bias = self.w.get("output.bias")
        return out + bias if bias is not None else out


def default_kq_scale(hp: HParams) -> float:
    return 1.0 / math.sqrt(hp.head_dim)

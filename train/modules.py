"""The trainable IndexMem modules, exactly as in METHOD.md sections 1 and 3.

Shapes use L for tokens, H/d_head for the backbone's query heads, H_idx/d_idx for the indexer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class IndexMemSizes:
    d_model: int
    n_head: int
    d_head: int
    n_idx_heads: int
    d_idx: int
    d_mem: int
    norm_eps: float = 1e-6
    mem_lambda: float = 1.0
    mem_eta: float = 1.0
    mem_eps: float = 1e-6
    # how the readout joins attention: "add" o + g·m (METHOD.md); "mix" o + g·(m − o), the
    # convex mix that lets the memory take back the share of attention the evicted tokens had;
    # "share" the same mix with the gate told how much attention the kept tokens hold (see
    # LatentMemory.gate_of)
    mem_combine: str = "add"

    @classmethod
    def paper(cls, d_model: int, n_head: int, d_head: int, **overrides) -> IndexMemSizes:
        """H_idx = max(1, H/4), d_idx = d_head/8, d_mem = d_model/8 (the paper's sizes)."""
        sizes = dict(n_idx_heads=max(1, n_head // 4), d_idx=max(1, d_head // 8), d_mem=max(1, d_model // 8))
        return cls(d_model=d_model, n_head=n_head, d_head=d_head, **{**sizes, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Indexer(nn.Module):
    """Lightning indexer: A[s, t] = sum_j a_s[j] * ReLU(q_s[j] . k_t)."""

    def __init__(self, s: IndexMemSizes):
        super().__init__()
        self.s = s
        self.U_q = nn.Linear(s.n_head * s.d_head, s.n_idx_heads * s.d_idx, bias=False)
        self.q_norm = RMSNorm(s.n_idx_heads * s.d_idx, s.norm_eps)
        self.U_k = nn.Linear(s.d_model, s.d_idx, bias=False)
        self.k_norm = RMSNorm(s.d_idx, s.norm_eps)
        self.G = nn.Linear(s.d_model, s.n_idx_heads, bias=False)

    def queries(self, x, q_pre):
        """x [L, d_model], q_pre [L, H, d_head] → q [L, H_idx, d_idx], head weights a [L, H_idx]."""
        q = self.q_norm(self.U_q(q_pre.flatten(-2))).unflatten(-1, (self.s.n_idx_heads, self.s.d_idx))
        a = self.G(x) / math.sqrt(self.s.n_idx_heads * self.s.d_idx)
        return q, a

    def keys(self, x):
        """x [L, d_model] → index keys [L, d_idx] (the only thing cached per token)."""
        return self.k_norm(self.U_k(x))

    @staticmethod
    def scores(q, a, k):
        """A [Lq, Lk] for queries q [Lq, H_idx, d_idx], weights a [Lq, H_idx], keys k [Lk, d_idx]."""
        return torch.einsum("sj,sjt->st", a, torch.relu(torch.einsum("sjd,td->sjt", q, k)))


class LatentMemory(nn.Module):
    """Per-layer latent memory with trained φ and gate; the fast state (M, b) lives outside."""

    def __init__(self, s: IndexMemSizes):
        super().__init__()
        self.s = s
        self.phi = nn.Linear(s.d_head, s.d_mem)  # the same map for keys and queries
        self.gate = nn.Linear(s.d_head, 1)  # g(q) = sigmoid(w . q + c)

    def empty_state(self, dtype=torch.float32):
        return torch.zeros(self.s.d_mem, self.s.d_head, dtype=dtype), torch.zeros(self.s.d_mem, dtype=dtype)

    def write(self, state, k, v):
        """Fold evicted pairs k, v [N, d_head] (every head of every evicted token) into (M, b)."""
        M, b = state
        fk = self.phi(k)
        return (
            self.s.mem_lambda * M + self.s.mem_eta * fk.transpose(0, 1) @ v,
            self.s.mem_lambda * b + self.s.mem_eta * (fk * fk).sum(0),
        )

    def parts(self, state, q):
        """Numerator φ(q)ᵀM [..., d_head] and denominator (φ(q) ⊙ φ(q))ᵀ b + ε [...] of m(q)."""
        M, b = state
        fq = self.phi(q)
        return fq @ M, (fq * fq) @ b + self.s.mem_eps

    def value(self, state, q):
        """m(q) = φ(q)ᵀM / ((φ(q) ⊙ φ(q))ᵀ b + ε) for queries q [..., d_head]."""
        num, den = self.parts(state, q)
        return num / den.unsqueeze(-1)

    def gate_of(self, state, q, lse=None):
        """g(q) [..., 1]: sigmoid(w·q + c), and with the "share" rule sigmoid(w·q + c + log den(q)
        − lse) where ``lse`` [...] is the log-sum-exp of the query's attention scores over the kept
        tokens. Attention over kept ∪ evicted gives the evicted tokens the share Z_e / (Z_k + Z_e)
        with Z = Σ exp(score) over each set; exp(lse) is Z_k exactly, and the memory's denominator
        (which grows with what was folded in and with the query's likeness to it) stands in for
        Z_e, up to the learned factor exp(w·q + c)."""
        return torch.sigmoid(self.gate_logit(state, q, lse))

    def gate_logit(self, state, q, lse=None, den=None):
        """The gate before its sigmoid, [..., 1] (``den``: m(q)'s denominator, if already computed)."""
        logit = self.gate(q)
        if self.s.mem_combine == "share":
            if lse is None:
                raise ValueError(
                    "the 'share' gate needs the log-sum-exp of the kept tokens' attention scores"
                )
            den = self.parts(state, q)[1] if den is None else den
            logit = logit + (torch.log(den) - lse).unsqueeze(-1)
        return logit

    def read(self, state, q):
        """The gated readout g(q)·m(q) (the "add" rule's term)."""
        return self.gate_of(state, q) * self.value(state, q)

    def combine(self, state, q, o, lse=None):
        """The attention output o [..., d_head] (per head, over the kept tokens) joined with the
        readout of the queries q [..., d_head]: o + g·m with "add", o + g·(m − o) with "mix" and
        "share" (``lse`` [...]: see :meth:`gate_of`)."""
        return self.combine_with_logit(state, q, o, lse)[0]

    def combine_with_logit(self, state, q, o, lse=None):
        """:meth:`combine` and the gate logit it used, from one pass of the queries through φ."""
        num, den = self.parts(state, q)
        logit = self.gate_logit(state, q, lse, den)
        g, m = torch.sigmoid(logit), num / den.unsqueeze(-1)
        return (o + g * m if self.s.mem_combine == "add" else o + g * (m - o)), logit

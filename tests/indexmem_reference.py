"""A torch reference of a tiny llama model generating under IndexMem, independent of the engine:
the backbone written from the llama equations (float64, reading the GGUF's F32 weights), the
indexer and the latent memory taken from the training modules (``indexmem.train.modules``),
eviction as METHOD.md section 2 states it (optionally with the scores max-pooled over neighbouring
cached positions, the engine's ``pool_kernel``). K and V are rounded to float16 as a KV cache stores
them, and the memory receives the evicted keys as the engine recovers them (RoPE undone on the
float16 key); nothing else emulates ggml.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
from indexmem.train.modules import Indexer, LatentMemory


def f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float64)


class ReferenceLlama:
    def __init__(
        self,
        gguf_path,
        indexers: list[Indexer],
        memories: list[LatentMemory] | None,
        budget: int,
        sinks: int,
        tau: int,
        pool_kernel: int = 1,
    ):
        r = gguf.GGUFReader(str(gguf_path))
        field = lambda key: r.fields[key].parts[r.fields[key].data[0]][0]  # noqa: E731
        self.n_layer = int(field("llama.block_count"))
        self.n_head = int(field("llama.attention.head_count"))
        self.n_head_kv = int(field("llama.attention.head_count_kv"))
        self.eps = float(field("llama.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(field("llama.rope.freq_base"))
        self.w = {}
        for t in r.tensors:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, "the reference reads F32 weights only"
            self.w[t.name] = torch.tensor(np.array(t.data), dtype=torch.float64)
        self.hd = self.w["blk.0.attn_q.weight"].shape[0] // self.n_head
        self.indexers = [m.double() for m in indexers]
        self.memories = [m.double() for m in memories] if memories else None
        self.budget, self.sinks, self.tau, self.pool_kernel = budget, sinks, tau, pool_kernel
        # per layer, by position: post-RoPE f16 key, f16 value, index key; running importance
        self.cache = [dict() for _ in range(self.n_layer)]
        self.importance = [dict() for _ in range(self.n_layer)]
        self.memory_state = [None] * self.n_layer

    # --- backbone pieces ---------------------------------------------------------------
    def rms(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def rope(self, x, pos):
        """Llama (adjacent-pair) rotation of x [T, heads, hd] by positions pos [T]."""
        i = torch.arange(self.hd // 2, dtype=torch.float64)
        theta = torch.as_tensor(pos, dtype=torch.float64)[:, None] * self.rope_base ** (-2 * i / self.hd)
        cos, sin = torch.cos(theta)[:, None, :], torch.sin(theta)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def lin(self, name, x):
        return x @ self.w[name].T

    # --- one step ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, tokens, positions, settle_tie=None):
        """Feed tokens at positions; returns logits [T, n_vocab] and the kept position sets of
        the layers that compressed after this step. ``settle_tie(il, kept, scores)`` may replace
        a layer's kept set by another that differs only among near-equal scores (the engine's,
        whose float32 scores can order a near tie the other way)."""
        pos = list(positions)
        h = self.w["token_embd.weight"][torch.as_tensor(tokens)]
        T, H, Hkv, hd = len(tokens), self.n_head, self.n_head_kv, self.hd
        for il in range(self.n_layer):
            p = f"blk.{il}."
            x = self.rms(h, self.w[p + "attn_norm.weight"])
            q_pre = self.lin(p + "attn_q.weight", x).view(T, H, hd)
            k_pre = self.lin(p + "attn_k.weight", x).view(T, Hkv, hd)
            v = self.lin(p + "attn_v.weight", x).view(T, Hkv, hd)
            q, k = self.rope(q_pre, pos), self.rope(k_pre, pos)
            idx_keys = self.indexers[il].keys(x)
            cache = self.cache[il]
            for t, pt in enumerate(pos):
                cache[pt] = (f16(k[t]), f16(v[t]), idx_keys[t])
            order = sorted(cache)
            K = torch.stack([cache[s][0] for s in order])  # [n, Hkv, hd]
            V = torch.stack([cache[s][1] for s in order])
            visible = torch.tensor(order)[None, :] <= torch.tensor(pos)[:, None]  # [T, n]
            self._score(il, x, q_pre, order, visible)
            o = torch.zeros(T, H, hd, dtype=torch.float64)
            lse = torch.zeros(T, H, dtype=torch.float64)
            for head in range(H):
                logits = (q[:, head] @ K[:, head // (H // Hkv)].T) / hd**0.5
                logits = logits.masked_fill(~visible, float("-inf"))
                o[:, head] = torch.softmax(logits, -1) @ V[:, head // (H // Hkv)]
                lse[:, head] = torch.logsumexp(logits, -1)
            if self.memory_state[il] is not None:
                o = self.memories[il].combine(self.memory_state[il], q_pre, o, lse)
            h = h + self.lin(p + "attn_output.weight", o.reshape(T, H * hd))
            x = self.rms(h, self.w[p + "ffn_norm.weight"])
            gate = torch.nn.functional.silu(self.lin(p + "ffn_gate.weight", x))
            h = h + self.lin(p + "ffn_down.weight", gate * self.lin(p + "ffn_up.weight", x))
        out = self.w.get("output.weight", self.w["token_embd.weight"])
        logits = self.rms(h, self.w["output_norm.weight"]) @ out.T
        kept = {il: self._maybe_compress(il, T, settle_tie) for il in range(self.n_layer)}
        return logits.numpy(), {il: k for il, k in kept.items() if k is not None}

    def _score(self, il, x, q_pre, order, visible):
        iq, a = self.indexers[il].queries(x, q_pre)
        keys = torch.stack([self.cache[il][s][2] for s in order])
        A = Indexer.scores(iq, a, keys).masked_fill(~visible, float("-inf"))
        imp = A.max(0).values
        for s, value in zip(order, imp.tolist()):
            self.importance[il][s] = max(self.importance[il].get(s, float("-inf")), value)

    def _maybe_compress(self, il, n_tokens, settle_tie=None):
        cache = self.cache[il]
        over = len(cache) - self.budget
        if over <= 0 or (n_tokens == 1 and over < self.tau):
            return None
        order = sorted(cache)
        raw = [self.importance[il][s] for s in order]
        half = (
            self.pool_kernel // 2
        )  # each score becomes the max over its cached neighbours in position order
        pooled = [max(raw[max(0, i - half) : i + half + 1]) for i in range(len(order))]
        scores = np.array([np.inf if s < self.sinks else v for s, v in zip(order, pooled)])
        ranked = np.lexsort((-np.array(order), -scores))  # best first, ties to the more recent
        kept = {order[i] for i in ranked[: self.budget]}
        if settle_tie is not None:
            kept = settle_tie(il, kept, dict(zip(order, scores.tolist())))
        evicted = [s for s in order if s not in kept]
        if self.memories is not None:
            self._write_memory(il, evicted)
        for s in evicted:
            del cache[s]
            del self.importance[il][s]
        for s in kept:
            self.importance[il][s] = float("-inf")  # the next round starts afresh (gamma = 0)
        return kept

    def _write_memory(self, il, evicted):
        cache, group = self.cache[il], self.n_head // self.n_head_kv
        k_rot = torch.stack([cache[s][0] for s in evicted])  # [N, Hkv, hd] as cached
        k = self.rope(k_rot, [-s for s in evicted])  # RoPE undone, as the engine recovers it
        v = torch.stack([cache[s][1] for s in evicted])
        # grouped-query heads expanded to the query heads (METHOD.md section 3)
        k = k.repeat_interleave(group, dim=1).reshape(-1, self.hd)
        v = v.repeat_interleave(group, dim=1).reshape(-1, self.hd)
        memory = self.memories[il]
        state = self.memory_state[il] or memory.empty_state(torch.float64)
        self.memory_state[il] = memory.write(state, k, v)

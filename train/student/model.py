"""The differentiable student: a frozen torch copy of a GGUF model that runs the
engine's bounded-cache procedure, so IndexMem's modules can be trained where they are used.

Tokens are fed in steps (prefill chunks, or one token); each step runs every layer over the
layer's cache plus the step's tokens, then every layer over its budget is compressed by the
indexer (``cache.py``) and, in memory layers, the evicted tokens are folded into the latent
memory with RoPE undone from their float16 keys, as ``engine/memory_write.py`` does. A memory
layer adds its gated readout of the pre-RoPE queries to attention once it has been written.

With ``settings=None`` the cache is unbounded (full KV): the teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..modules import Indexer, LatentMemory
from .blocks import Architecture, attend, kept_lse, to_f16, visible_mask
from .cache import BoundedSettings, LayerCache, needs_compression, to_keep
from .gemma3 import Gemma3
from .llama import Llama
from .memory import MemoryTrace
from .qwen2 import Qwen2
from .qwen3 import Qwen3
from .weights import load_weights

ARCHITECTURES = {cls.arch: cls for cls in (Llama, Qwen2, Qwen3, Gemma3)}
NEG = float("-inf")


def load_backbone(path: str | Path, matrices: str = "f32") -> Architecture:
    """``matrices``: "f32" or "f16", how the frozen matrices are held (``weights.py``)."""
    hp, weights, types = load_weights(path, matrices)
    return ARCHITECTURES[hp.arch](hp, weights, types)


class Student:
    def __init__(
        self,
        backbone: Architecture,
        settings: BoundedSettings | None = None,
        indexers: list[Indexer] | None = None,
        memories: dict[int, LatentMemory] | None = None,
        settle=None,
    ):
        """``indexers``: one per layer (needed when bounded); ``memories``: the memory layers'
        modules (None or empty: no memory). ``settle(il, keep, positions, scores)`` may replace
        a layer's kept mask before it is applied (tests use it to follow another engine's choice
        among near ties)."""
        hp = backbone.hp
        if settings is not None and indexers is None:
            raise ValueError("a bounded student needs the indexers")
        self.backbone, self.hp, self.settings, self.settle = backbone, hp, settings, settle
        self.indexers = indexers
        self.memories = memories or {}
        windows = [backbone.layer_window(il) for il in range(hp.n_layer)]
        self.windows = windows
        self.rules = [settings.rule(w) for w in windows] if settings else None
        self.reset()

    def reset(self) -> None:
        self.caches = [LayerCache() for _ in range(self.hp.n_layer)]
        group = self.hp.n_head // self.hp.n_head_kv
        self.traces = {il: MemoryTrace(m, group) for il, m in self.memories.items()}
        self.n_past = 0
        self._states: dict[int, tuple] = {}
        self.gates: dict[int, list[torch.Tensor]] = {}  # mean gate of each read, per memory layer
        self.gate_logits: dict[int, list[torch.Tensor]] = {}  # every read's gate logits (no gradient)
        self.kept_history: list[dict[int, torch.Tensor]] = []  # positions kept, per compression

    # --- one step ----------------------------------------------------------------------
    def step(self, tokens, logits_at=None, grad: bool = False) -> torch.Tensor | None:
        """Feed ``tokens`` at the next positions. ``logits_at``: indices into this step's tokens
        whose logits are returned ("all", a list, or None for none). ``grad``: build the graph
        for a backward pass (memory states rebuilt from their recorded rounds)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        n = len(tokens)
        self.pos = torch.arange(self.n_past, self.n_past + n)
        with torch.set_grad_enabled(grad):
            self._states = {
                il: (t.replay() if grad else t.state) for il, t in self.traces.items() if t.written
            }
            h = self.backbone.embed(tokens)
            for il in range(self.hp.n_layer):
                h = self.backbone.layer(self, il, h)
            out = None
            if logits_at is not None:
                rows = h if isinstance(logits_at, str) else h[torch.as_tensor(logits_at)]
                out = self.backbone.logits(rows)
        self.n_past += n
        if self.settings is not None:
            self._compress_all(n)
        return out

    def attention(self, il, x, q_pre, k_pre, v, q_scale: float, kq_scale: float):
        """Cached attention of layer ``il`` (+ the memory's readout), the step's tokens
        written into the cache and scored by the indexer."""
        bb, cache, pos = self.backbone, self.caches[il], self.pos
        q = bb.rope(q_pre, il, pos)
        if q_scale != 1.0:
            q = q * q_scale
        k = to_f16(bb.rope(k_pre, il, pos))
        all_pos, K, V = cache.extended(pos, k, to_f16(v))
        visible = visible_mask(pos, all_pos, self.windows[il])
        index_keys = importance = None
        if self.rules is not None and self.rules[il].by_indexer:
            index_keys, importance = self._index(il, x, q_pre, visible)
        cache.store(all_pos, K, V, index_keys, importance)
        q = to_f16(q)
        o = attend(q, K, V, visible, kq_scale)
        if il in self._states:
            memory, state = self.memories[il], self._states[il]
            lse = kept_lse(q, K, visible, kq_scale) if memory.s.mem_combine == "share" else None
            o, logit = memory.combine_with_logit(state, q_pre, o.view(q_pre.shape), lse)
            o = o.flatten(1)
            self.gates.setdefault(il, []).append(torch.sigmoid(logit).mean())
            self.gate_logits.setdefault(il, []).append(logit.detach().flatten())
        return o

    def _index(self, il, x, q_pre, visible):
        """Index keys of the cache and this step, and every slot's importance so far."""
        indexer, cache = self.indexers[il], self.caches[il]
        with torch.no_grad():
            new_keys = indexer.keys(x)
            keys = new_keys if cache.index_keys is None else torch.cat([cache.index_keys, new_keys])
            q, a = indexer.queries(x, q_pre)
            scores = Indexer.scores(q, a, keys).masked_fill(~visible, NEG).amax(0)
            seen = torch.cat([cache.importance, torch.full((len(x),), NEG)])
            return keys, torch.maximum(seen, scores)

    # --- eviction ----------------------------------------------------------------------
    def _compress_all(self, n_tokens: int) -> None:
        kept = {}
        for il, (cache, rule) in enumerate(zip(self.caches, self.rules)):
            if not needs_compression(len(cache), rule, n_tokens, self.settings.tau):
                continue
            keep, scores = to_keep(cache, rule, self.settings.pool_kernel)
            if self.settle is not None:
                keep = self.settle(il, keep, cache.pos, scores)
            if il in self.traces and not keep.all():
                gone = ~keep
                k_pre = self.backbone.rope(cache.k[gone], il, -cache.pos[gone])
                self.traces[il].write(k_pre, cache.v[gone])
            cache.keep_only(keep)
            kept[il] = cache.pos.clone()
        self.kept_history.append(kept)

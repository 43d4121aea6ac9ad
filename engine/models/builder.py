"""Shared building blocks of a decoder forward graph (the counterpart of llama.cpp's
``llm_graph_context``): embeddings, norms, projections, RoPE, cached attention, FFNs.

Every intermediate an IndexMem module or a test may need is named ``<what>-<layer>``:
``attn_norm-3`` (the normalized input x), ``Qpre-3``/``Kpre-3`` (queries and keys before RoPE,
after any QK-norm), ``Qcur-3``/``Kcur-3`` (as attention uses them), ``Vcur-3``, ``kqv_out-3``
(attention output before the output projection), ``l_out-3``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ggml_ops.bindings import C, tensor_struct
from ...ggml_ops.graph import Graph, shape_of
from ...ggml_ops.indexmem import importance, index_keys, index_queries, memory_read
from ...ggml_ops.matmul import weight_product
from ...ggml_ops.reduce import sum_over_rows
from ...ggml_ops.structs import GGMLType
from ..attention import FLASH, attend, attention_kernel
from ..cache import KVCache, head_view


@dataclass(frozen=True)
class StepPlan:
    """The shape of one forward step; two steps with equal plans share one graph.

    Per layer: visible cache slots, which mask and which write-index input it uses, how many of
    the last queries report attention, and IndexMem's parts: whether the indexer scores the
    cache and whether the latent memory's readout is added to attention. (Evictions are carried
    out between steps, by :meth:`ForwardRunner.flush`, never inside a step graph.)"""

    n_tokens: int
    n_out: int  # rows of logits produced: n_tokens (all) or 1 (last)
    layer_n_kv: tuple[int, ...]
    layer_mask: tuple[int, ...]
    layer_idx: tuple[int, ...]
    layer_attn: tuple[int, ...] = ()
    capture: frozenset = frozenset()
    layer_index: tuple[bool, ...] = ()
    layer_mem_read: tuple[bool, ...] = ()
    index_queries: bool = False  # output the indexer's queries (the recall tier scores its store)
    attention: str = FLASH  # the attention path of every layer this step (engine/attention.py)
    index_kernel: bool = False  # the indexer's scores by the CPU kernel (ggml_ops/importance_kernel.c)
    weight_kernel: bool = False  # Q4_1 weight products by the CPU kernel (ggml_ops/matmul_kernel.c)

    def mask_sizes(self) -> dict[int, int]:
        return {m: n_kv for m, n_kv in zip(self.layer_mask, self.layer_n_kv)}


class Builder:
    def __init__(self, model, cache: KVCache, plan: StepPlan):
        self.g = Graph()
        self.ctx = self.g.ctx
        self.model = model
        self.hp = model.hp
        self.w = model.weights
        self.cache = cache
        self.plan = plan
        n = plan.n_tokens
        self.n_tokens = n
        self.tokens = self.g.input("tokens", GGMLType.I32, n)
        self.pos = self.g.input("pos", GGMLType.I32, n)
        self.kv_idx = {i: self.g.input(f"kv_idx-{i}", GGMLType.I64, n) for i in set(plan.layer_idx)}
        self.masks = {
            m: self.g.input(f"mask-{m}", GGMLType.F16, n_kv, n) for m, n_kv in plan.mask_sizes().items()
        }
        self.out_ids = self.g.input("out_ids", GGMLType.I32, plan.n_out) if plan.n_out < n else None

    def cb(self, t, name: str, il: int = -1):
        return self.g.name(t, f"{name}-{il}" if il >= 0 else name)

    def lw(self, il: int, name: str):
        """Layer weight ``blk.{il}.{name}`` or None when the file does not have it."""
        return self.w.get(f"blk.{il}.{name}")

    # --- blocks ------------------------------------------------------------------------
    def embed(self):
        return self.cb(C.ggml_get_rows(self.ctx, self.w["token_embd.weight"], self.tokens), "inp_embd")

    def norm(self, x, weight, name: str, il: int = -1):
        cur = C.ggml_rms_norm(self.ctx, x, self.hp.rms_eps)
        if weight:
            cur = C.ggml_mul(self.ctx, cur, weight)
        return self.cb(cur, name, il)

    def linear(self, weight, x, bias=None):
        kernel = attention_kernel() if self.plan.weight_kernel else None
        cur = weight_product(self.ctx, weight, x, kernel)
        if bias:
            cur = C.ggml_add(self.ctx, cur, bias)
        return cur

    def qkv(self, x, il: int):
        """Per-head Q [hd, H, T], K and V [hd, Hkv, T], before any norm or RoPE."""
        hp, n = self.hp, self.n_tokens
        q = self.linear(self.lw(il, "attn_q.weight"), x, self.lw(il, "attn_q.bias"))
        k = self.linear(self.lw(il, "attn_k.weight"), x, self.lw(il, "attn_k.bias"))
        v = self.linear(self.lw(il, "attn_v.weight"), x, self.lw(il, "attn_v.bias"))
        q = C.ggml_reshape_3d(self.ctx, q, hp.head_dim, hp.n_head, n)
        k = C.ggml_reshape_3d(self.ctx, k, hp.head_dim, hp.n_head_kv, n)
        v = C.ggml_reshape_3d(self.ctx, v, hp.head_dim, hp.n_head_kv, n)
        return q, k, self.cb(v, "Vcur", il)

    def rope(self, x, il: int, pos=None):
        """RoPE of layer ``il`` (the model's :meth:`rope_args`) at this step's positions, or at
        ``pos`` (negative positions undo the rotation)."""
        return self.model.rope(self.ctx, x, il, self.pos if pos is None else pos)

    def attention(self, il: int, q, k, v, kq_scale: float):
        """Write this step's K/V into the layer's cache slots, attend over the visible slots.

        q: [hd, H, T] post-RoPE; k, v: [hd, Hkv, T]. Returns [hd*H, T] (``kqv_out``)."""
        hp, ctx, plan = self.hp, self.ctx, self.plan
        n_kv = plan.layer_n_kv[il]
        layer = self.cache.layers[il]
        idx = self.kv_idx[plan.layer_idx[il]]
        n = self.n_tokens
        self.g.expand(C.ggml_set_rows(ctx, layer.k, C.ggml_reshape_2d(ctx, k, hp.n_embd_kv, n), idx))
        self.g.expand(C.ggml_set_rows(ctx, layer.v, C.ggml_reshape_2d(ctx, v, hp.n_embd_kv, n), idx))
        kview = head_view(ctx, layer.k, hp.head_dim, n_kv)
        vview = head_view(ctx, layer.v, hp.head_dim, n_kv)
        mask = self.masks[plan.layer_mask[il]]
        if plan.layer_index and plan.layer_index[il]:
            self.index_importance(il, idx, mask, n_kv)
        reads = bool(plan.layer_mem_read and plan.layer_mem_read[il])
        share = reads and self.cache.indexmem.modules.mem_combine == "share"
        cur = attend(ctx, plan.attention, q, kview, vview, mask, kq_scale, with_lse=share)
        cur, lse = cur if share else (cur, None)
        if plan.layer_attn and plan.layer_attn[il]:
            self.attention_mass(il, q, kview, mask, kq_scale, plan.layer_attn[il])
        if reads:
            cur = self.memory_readout(il, self.cb(cur, "kqv_attn", il), lse)
        return self.cb(cur, "kqv_out", il)

    # --- IndexMem ----------------------------------------------------------------------
    def index_importance(self, il: int, idx, mask, n_kv: int):
        """Cache this step's index keys (in the slots its K/V go to) and score every visible
        slot with the indexer, max over this step's queries: ``idx_imp-<il>``, [n_kv]."""
        ctx, state = self.ctx, self.cache.indexmem
        iw = state.modules.indexer(il)
        x, q_pre = self.g.named[f"attn_norm-{il}"], self.g.named[f"Qpre-{il}"]
        self.g.expand(C.ggml_set_rows(ctx, state.keys[il], index_keys(ctx, x, iw), idx))
        q, a = index_queries(ctx, x, q_pre, iw)
        kernel = attention_kernel() if self.plan.index_kernel else None
        self.g.output(self.cb(importance(ctx, q, a, state.keys[il], n_kv, mask, kernel), "idx_imp", il))
        if self.plan.index_queries:
            self.g.output(self.cb(q, "idx_q", il))
            self.g.output(self.cb(a, "idx_a", il))

    def memory_readout(self, il: int, o_attn, lse=None):
        """The attention output joined with the readout of this step's pre-RoPE queries against
        the layer's latent memory (the file's combine rule; ``lse``: the "share" gate's input)."""
        state = self.cache.indexmem
        q_pre = self.g.named[f"Qpre-{il}"]
        return memory_read(
            self.ctx, q_pre, state.mem_m[il], state.mem_b[il], state.modules.memory(il), o_attn, lse
        )

    def attention_mass(self, il: int, q, kview, mask, kq_scale: float, n_queries: int):
        """Attention probability each visible slot receives from the last ``n_queries`` queries,
        summed over those queries and all heads: ``attn_mass-<il>``, [n_kv]. Only the queries
        a policy asks for are multiplied, never a full L x L matrix."""
        ctx, n, hp = self.ctx, self.n_tokens, self.hp
        first = n - n_queries
        qs = C.ggml_view_3d(
            ctx,
            q,
            hp.head_dim,
            hp.n_head,
            n_queries,
            tensor_struct(q).nb[1],
            tensor_struct(q).nb[2],
            first * tensor_struct(q).nb[2],
        )
        qs = C.ggml_cont(ctx, C.ggml_permute(ctx, qs, 0, 2, 1, 3))  # [hd, w, H]
        ms = C.ggml_view_2d(
            ctx,
            mask,
            tensor_struct(mask).ne[0],
            n_queries,
            tensor_struct(mask).nb[1],
            first * tensor_struct(mask).nb[1],
        )
        kq = C.ggml_mul_mat(ctx, kview, qs)  # [n_kv, w, H]
        probs = C.ggml_soft_max_ext(ctx, kq, ms, kq_scale, 0.0)
        n_kv = tensor_struct(kq).ne[0]
        mass = sum_over_rows(ctx, C.ggml_reshape_2d(ctx, probs, n_kv, n_queries * hp.n_head))  # [n_kv, 1]
        self.g.output(self.cb(mass, "attn_mass", il))

    def ffn_gated(self, x, il: int, act: str):
        gate = self.cb(self.linear(self.lw(il, "ffn_gate.weight"), x), "ffn_gate", il)
        up = self.cb(self.linear(self.lw(il, "ffn_up.weight"), x), "ffn_up", il)
        glu = C.ggml_swiglu_split if act == "silu" else C.ggml_geglu_split
        cur = self.cb(glu(self.ctx, gate, up), f"ffn_{'swiglu' if act == 'silu' else 'geglu'}", il)
        return self.cb(self.linear(self.lw(il, "ffn_down.weight"), cur), "ffn_out", il)

    def select_outputs(self, *tensors):
        """Keep only the rows whose logits are wanted (before the last layer's FFN)."""
        if self.out_ids is None:
            return tensors
        return tuple(C.ggml_get_rows(self.ctx, t, self.out_ids) for t in tensors)

    def logits(self, x, softcap: float = 0.0):
        cur = self.norm(x, self.w["output_norm.weight"], "result_norm")
        out = self.w.get("output.weight") or self.w["token_embd.weight"]
        cur = C.ggml_mul_mat(self.ctx, out, cur)
        if softcap:
            cur = C.ggml_scale(self.ctx, cur, 1.0 / softcap)
            cur = C.ggml_tanh(self.ctx, cur)
            cur = C.ggml_scale(self.ctx, cur, softcap)
        return self.cb(cur, "result_output")

    def finish(self, logits):
        self.g.logits = self.g.output(logits)
        for name in self.plan.capture:
            t = self.g.named.get(name)
            if t is None:
                raise KeyError(f"no intermediate named {name!r} in the {self.hp.arch} graph")
            self.g.output(t)
        return self.g

    @staticmethod
    def shape(t):
        return shape_of(t)

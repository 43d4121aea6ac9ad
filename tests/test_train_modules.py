"""IndexMem torch modules and losses on tiny random tensors."""

import math

import pytest
import torch
from indexmem.train.losses import (
    attention,
    indexer_importance,
    kl_loss,
    memory_loss,
    naive_kl_loss,
    teacher_logits,
    window_importance,
)
from indexmem.train.modules import Indexer, IndexMemSizes, LatentMemory

SIZES = IndexMemSizes.paper(d_model=32, n_head=8, d_head=16)  # H_idx 2, d_idx 2, d_mem 4


def _features(n=40, seed=0, n_kv=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    q_pre = torch.randn(n, 8, 16, generator=g)
    q_cur = torch.randn(n, 8, 16, generator=g)
    k_cur = torch.randn(n, n_kv, 16, generator=g)
    return x, q_pre, q_cur, k_cur


def test_paper_sizes():
    assert (SIZES.n_idx_heads, SIZES.d_idx, SIZES.d_mem) == (2, 2, 4)
    assert IndexMemSizes.paper(576, 9, 64).n_idx_heads == 2
    assert IndexMemSizes.paper(640, 4, 256).d_idx == 32


def test_indexer_shapes_and_score_definition():
    torch.manual_seed(0)
    idx = Indexer(SIZES)
    x, q_pre, _, _ = _features()
    q, a = idx.queries(x, q_pre)
    k = idx.keys(x)
    assert q.shape == (40, 2, 2) and a.shape == (40, 2) and k.shape == (40, 2)
    A = idx.scores(q, a, k)
    s, t = 7, 3
    expected = sum(a[s, j] * torch.relu(q[s, j] @ k[t]) for j in range(2))
    assert torch.allclose(A[s, t], expected, atol=1e-6)
    assert torch.allclose(a, idx.G(x) / math.sqrt(2 * 2))


def test_importance_is_the_max_over_later_queries_only():
    torch.manual_seed(1)
    idx = Indexer(SIZES)
    x, q_pre, _, _ = _features()
    imp = indexer_importance(idx, x, q_pre, block=8)
    q, a = idx.queries(x, q_pre)
    A = idx.scores(q, a, idx.keys(x))
    for t in range(40):
        assert torch.allclose(imp[t], A[t:, t].max())
    # an earlier query never counts: make query 0 score huge on every key
    x2, q2 = x.clone(), q_pre.clone()
    q2[0] *= 100.0
    assert torch.allclose(indexer_importance(idx, x2, q2, block=8)[1:], imp[1:])


@pytest.mark.parametrize("s0,s1,block", [(0, 40, 8), (10, 30, 7), (25, 26, 4), (13, 40, 64)])
def test_window_importance_is_the_max_over_the_window_queries_at_or_after_each_key(s0, s1, block):
    torch.manual_seed(2)
    idx = Indexer(SIZES)
    x, q_pre, _, _ = _features()
    imp = window_importance(idx, x, q_pre, s0, s1, block=block)
    q, a = idx.queries(x, q_pre)
    A = idx.scores(q, a, idx.keys(x))
    assert imp.shape == (s1,)
    for t in range(s1):
        assert torch.allclose(imp[t], A[max(s0, t) : s1, t].max(), atol=1e-6)
    # queries outside the window never count
    q2 = q_pre.clone()
    q2[:s0] *= 100.0
    q2[s1:] *= 100.0
    assert torch.allclose(window_importance(idx, x, q2, s0, s1, block=block), imp)


@pytest.mark.parametrize("block", [3, 64])
def test_teacher_min_distance_counts_only_distant_queries(block):
    _, _, q_cur, k_cur = _features()
    T = torch.einsum("shd,thd->sht", q_cur, k_cur.repeat_interleave(4, 1)).amax(1) / 4.0
    got = teacher_logits(q_cur, k_cur, block=block, min_distance=10)
    for t in range(40):
        if t + 10 < 40:
            assert torch.allclose(got[t], T[t + 10 :, t].max())
        else:
            assert got[t] == float("-inf")
    # keys the teacher does not score drop out of the loss instead of making it nan
    student = torch.randn(40)
    loss = kl_loss(got, student, sinks=4)
    assert torch.isfinite(loss) and torch.allclose(loss, kl_loss(got[:30], student[:30], sinks=4))


@pytest.mark.parametrize("block", [1, 7, 64])
def test_streaming_kl_equals_naive(block):
    torch.manual_seed(2)
    idx = Indexer(SIZES)
    x, q_pre, q_cur, k_cur = _features(n=50)
    streamed = kl_loss(
        teacher_logits(q_cur, k_cur, block=block), indexer_importance(idx, x, q_pre, block=block)
    )
    assert torch.allclose(streamed, naive_kl_loss(idx, x, q_pre, q_cur, k_cur), atol=1e-5)
    assert streamed >= 0


def test_sinks_are_excluded():
    teacher = torch.tensor([100.0, 100.0, 100.0, 100.0, 1.0, 2.0, 3.0])
    student = torch.tensor([-100.0, 50.0, 0.0, 7.0, 1.0, 2.0, 3.0])
    assert kl_loss(teacher, student, sinks=4).abs() < 1e-6
    assert kl_loss(teacher, student, sinks=0) > 1.0


def test_gradients_reach_only_the_trainable_parameters():
    torch.manual_seed(3)
    idx, mem = Indexer(SIZES), LatentMemory(SIZES)
    x, q_pre, q_cur, k_cur = _features(n=24)
    feats = [x, q_pre, q_cur, k_cur]
    loss = kl_loss(teacher_logits(q_cur, k_cur), indexer_importance(idx, x, q_pre, block=5))
    v = torch.randn(24, 2, 16)
    o_full = torch.randn(4, 8 * 16)
    loss = loss + memory_loss(mem, o_full, torch.zeros_like(o_full), q_pre[-4:], k_cur[:10], v[:10])
    loss.backward()
    for p in list(idx.parameters()) + list(mem.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(t.grad is None and not t.requires_grad for t in feats)


def test_memory_write_and_read_follow_the_equations():
    torch.manual_seed(4)
    s = IndexMemSizes.paper(32, 8, 16, mem_lambda=0.5, mem_eta=2.0)
    mem = LatentMemory(s)
    k, v, q = torch.randn(6, 16), torch.randn(6, 16), torch.randn(3, 16)
    M, b = mem.write(mem.write(mem.empty_state(), k[:4], v[:4]), k[4:], v[4:])
    fk = mem.phi(k)
    M_ref = 0.5 * (2.0 * fk[:4].T @ v[:4]) + 2.0 * fk[4:].T @ v[4:]
    b_ref = 0.5 * (2.0 * (fk[:4] ** 2).sum(0)) + 2.0 * (fk[4:] ** 2).sum(0)
    assert torch.allclose(M, M_ref, atol=1e-5) and torch.allclose(b, b_ref, atol=1e-5)
    fq = mem.phi(q)
    ref = torch.sigmoid(mem.gate(q)) * (fq @ M_ref) / ((fq**2) @ b_ref + s.mem_eps).unsqueeze(-1)
    assert torch.allclose(mem.read((M, b), q), ref, atol=1e-5)


@pytest.mark.parametrize("combine", ["add", "mix", "share"])
def test_combine_joins_attention_and_readout_by_the_rule(combine):
    torch.manual_seed(6)
    s = IndexMemSizes.paper(32, 8, 16, mem_combine=combine)
    mem = LatentMemory(s)
    k, v = torch.randn(6, 16), torch.randn(6, 16)
    state = mem.write(mem.empty_state(), k, v)
    q, o, lse = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3)
    fq, fk = mem.phi(q), mem.phi(k)
    den = (fq**2 * (fk**2).sum(0)).sum(-1) + s.mem_eps
    m = (fq @ fk.T @ v) / den.unsqueeze(-1)
    logit = mem.gate(q) + (torch.log(den) - lse).unsqueeze(-1) if combine == "share" else mem.gate(q)
    g = torch.sigmoid(logit)
    ref = o + g * m if combine == "add" else (1 - g) * o + g * m
    assert torch.allclose(mem.combine(state, q, o, lse), ref, atol=1e-5)
    if combine == "share":  # the kept tokens' mass is an input of this gate, never guessed
        with pytest.raises(ValueError, match="log-sum-exp"):
            mem.combine(state, q, o)


def test_attention_helper_matches_a_loop():
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 4, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    visible = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    out = attention(q, k, v, visible).view(3, 4, 8)
    for s in range(3):
        for h in range(4):
            w = torch.softmax((k[visible[s], h // 2] @ q[s, h]) / math.sqrt(8), 0)
            assert torch.allclose(out[s, h], w @ v[visible[s], h // 2], atol=1e-5)

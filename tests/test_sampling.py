"""Samplers against straightforward reference definitions."""

import numpy as np
import pytest
from indexmem.engine.sampling import Sampler, SamplingParams


def reference_distribution(logits, temperature, top_k, top_p, min_p):
    """The textbook definition, written independently of the sampler: sort, cut, renormalize."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    if top_k:
        order = order[:top_k]
    p = np.exp(np.array([logits[i] for i in order]) - logits[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        cum, cut = 0.0, len(order)
        for j, pj in enumerate(p):
            cum += pj
            if cum >= top_p:
                cut = j + 1
                break
        order, p = order[:cut], p[:cut]
    if min_p:
        keep = [j for j in range(len(order)) if p[j] >= min_p * p[0]]
        order = [order[j] for j in keep]
    z = np.array([logits[i] for i in order]) / temperature
    q = np.exp(z - z.max())
    return dict(zip(order, q / q.sum()))


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert Sampler(SamplingParams(temperature=0.0)).sample(logits) == int(np.argmax(logits))


@pytest.mark.parametrize(
    "top_k,top_p,min_p", [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.8, 0.0), (0, 1.0, 0.2), (20, 0.9, 0.05)]
)
def test_candidate_distribution_matches_reference(top_k, top_p, min_p):
    logits = np.random.default_rng(1).normal(scale=2.0, size=64).astype(np.float32)
    sampler = Sampler(SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p))
    ids, probs = sampler.candidates(logits)
    ref = reference_distribution(logits, 0.7, top_k, top_p, min_p)
    assert set(ids.tolist()) == set(ref)
    for i, p in zip(ids.tolist(), probs):
        assert p == pytest.approx(ref[i], rel=1e-6)


def test_empirical_frequencies_follow_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3))
    counts = np.bincount([sampler.sample(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_seed_reproduces_and_differs():
    logits = np.random.default_rng(2).normal(size=500).astype(np.float32)

    def draw(seed):
        s = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        return [s.sample(logits) for _ in range(50)]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_repetition_penalty_like_llama_cpp():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=2)).penalize(logits, [3, 0, 1])
    # only the last 2 tokens (0 and 1) are penalized: positive / 2, negative * 2
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, 0.5])


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(top_p=0.0))
    with pytest.raises(ValueError):
        Sampler(SamplingParams(repeat_penalty=0.0))

"""Bounded KV cache: every policy step by step against the numpy reference, the budget
invariants, physical compaction, identity with the unbounded engine, fixed allocation."""

import numpy as np
import pytest
from indexmem import Engine
from indexmem.engine.policies import POLICIES
from policy_reference import ReferenceLayer
from tiny_models import random_prompt

B, SINKS, WINDOW, TAU, N_BATCH = 24, 2, 3, 4, 8
EVICTING = sorted(set(POLICIES) - {"full", "indexmem"})  # indexmem: tests/test_indexmem.py


def _kept(engine, il):
    t = engine.cache.table_of(il)
    return set(t.positions[: t.n_used][t.positions[: t.n_used] >= 0].tolist())


def _steps(prompt_len=41, n_decode=40, seed=0, n_batch=N_BATCH):
    """Prefill in chunks of ``n_batch``, then single decode tokens."""
    tokens = random_prompt(prompt_len + n_decode, seed=seed)
    chunks = [tokens[i : i + n_batch] for i in range(0, prompt_len, n_batch)]
    return chunks + [[t] for t in tokens[prompt_len:]]


# H2O also with chunks of 150 queries, all of whose attention the graph sums
@pytest.mark.parametrize(
    "policy, n_batch, prompt_len", [(p, N_BATCH, 41) for p in EVICTING] + [("h2o", 150, 300)]
)
def test_kept_set_equals_numpy_reference_step_by_step(tiny_llama, policy, n_batch, prompt_len):
    eng = Engine.load(
        str(tiny_llama),
        n_ctx=512,
        policy=policy,
        budget=B,
        sinks=SINKS,
        window=WINDOW,
        tau=TAU,
        n_batch=n_batch,
        seed=5,
        obs_window=4,
        pool_kernel=3,
    )
    hp = eng.hparams
    refs = [
        ReferenceLayer(
            policy,
            il,
            B,
            SINKS,
            WINDOW,
            TAU,
            hp.n_head,
            hp.n_head_kv,
            1.0 / np.sqrt(hp.head_dim),
            obs_window=4,
            pool_kernel=3,
            seed=5,
        )
        for il in range(hp.n_layer)
    ]
    names = [f"{w}-{il}" for il in range(hp.n_layer) for w in ("Qcur", "Kcur")]
    pos, compressions, near_ties = 0, 0, 0
    for chunk in _steps(prompt_len, n_batch=n_batch):
        positions = list(range(pos, pos + len(chunk)))
        pos += len(chunk)
        _, cap = eng.runner.step(np.array(chunk), np.array(positions), capture=names)
        for il, ref in enumerate(refs):
            q = cap[f"Qcur-{il}"].reshape(len(chunk), hp.n_head, hp.head_dim)
            k = cap[f"Kcur-{il}"].reshape(len(chunk), hp.n_head_kv, hp.head_dim)
            expected = ref.step(positions, q, k)
            kept = _kept(eng, il)
            if expected is None:
                assert kept == set(ref.keys), f"{policy} layer {il}: compressed when it should not"
            else:
                compressions += 1
                assert len(kept) == B
                for p in kept ^ expected:  # only float near-ties at the cut may differ
                    near_ties += 1
                    assert abs(ref.last_scores[p] - ref.cut) <= 2e-2 * abs(ref.cut) + 1e-9, (
                        f"{policy} layer {il} step at {positions[0]}: position {p} differs"
                    )
            ref.sync(kept, expected is not None)
    assert compressions >= 2 * hp.n_layer * 5
    assert near_ties <= compressions  # ties are rare; a wrong policy would differ everywhere


@pytest.mark.parametrize("policy", EVICTING)
def test_budget_sinks_positions_and_physical_compaction(tiny_llama, policy):
    """No layer ever holds more than B + tau tokens after a step; the sinks stay; and every
    slot's K row is the key computed for the position it claims (compaction moved real data)."""
    rng = np.random.default_rng(hash(policy) % 1000)
    for trial in range(3):
        budget, tau = int(rng.integers(8, 40)), int(rng.integers(1, 9))
        eng = Engine.load(
            str(tiny_llama), n_ctx=512, policy=policy, budget=budget, sinks=SINKS, tau=tau, n_batch=N_BATCH
        )
        hp = eng.hparams
        names = [f"Kcur-{il}" for il in range(hp.n_layer)]
        key_of = [dict() for _ in range(hp.n_layer)]
        pos = 0
        for chunk in _steps(int(rng.integers(20, 120)), int(rng.integers(5, 40)), seed=trial):
            positions = np.arange(pos, pos + len(chunk))
            pos += len(chunk)
            _, cap = eng.runner.step(np.array(chunk), positions, capture=names)
            for il in range(hp.n_layer):
                k = cap[f"Kcur-{il}"].reshape(len(chunk), -1)
                key_of[il].update(zip(positions.tolist(), k.astype(np.float16)))
                kept = _kept(eng, il)
                assert len(kept) <= budget + tau
                assert set(range(min(SINKS, pos))) <= kept
        eng.runner.flush()
        for il in range(hp.n_layer):
            t = eng.cache.table_of(il)
            stored = _read_k(eng, il, t.n_used)
            for slot in range(t.n_used):
                np.testing.assert_array_equal(stored[slot], key_of[il][int(t.positions[slot])])


def _read_k(eng, il, n):
    from indexmem.ggml_ops.bindings import C

    out = np.empty((n, eng.hparams.n_embd_kv), dtype=np.float16)
    C.ggml_backend_tensor_get(eng.cache.layers[il].k, out.ctypes.data, 0, out.nbytes)
    return out


@pytest.mark.parametrize("policy", sorted(set(POLICIES) - {"indexmem"}))  # indexmem: test_indexmem
def test_budget_at_least_the_context_is_the_unbounded_engine(tiny_llama, policy):
    tokens = random_prompt(60, seed=11)
    full = Engine.load(str(tiny_llama), n_ctx=128, n_batch=16)
    bounded = Engine.load(str(tiny_llama), n_ctx=128, n_batch=16, policy=policy, budget=128)
    np.testing.assert_array_equal(bounded.logits(tokens), full.logits(tokens))
    roomy = Engine.load(str(tiny_llama), n_ctx=128, n_batch=16, policy=policy, budget=100, tau=50)
    np.testing.assert_array_equal(roomy.logits(tokens), full.logits(tokens))
    assert sum(roomy.stats()["tokens_evicted"]) == 0


def test_allocated_bytes_do_not_depend_on_context_length(tiny_llama):
    sizes = []
    for n in (1000, 8000):
        eng = Engine.load(str(tiny_llama), n_ctx=8192, policy="streaming", budget=64, tau=4, n_batch=64)
        list(eng.generate_tokens(random_prompt(n, seed=n), max_tokens=4, stop_at_eog=False))
        s = eng.stats()
        assert max(s["tokens_cached"]) <= 64 + 4
        sizes.append((s["cache_buffers"], s["kv_bytes"]))
    assert sizes[0] == sizes[1]


def test_bounded_generation_runs_past_the_budget(tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=1024, policy="h2o", budget=32, tau=2, n_batch=16)
    out = list(eng.generate_tokens(random_prompt(100, seed=3), max_tokens=200, stop_at_eog=False))
    assert len(out) == 200
    assert max(eng.stats()["tokens_cached"]) <= 32 + 2
    assert min(eng.stats()["tokens_evicted"]) >= 300 - 34


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(policy="snapkv", budget=3, sinks=4), "must exceed sinks"),
        (dict(policy="h2o", budget=64, tau=-1), "tau must be >= 1"),
        (dict(policy="h2o", budget=64, tau=0), "tau must be >= 1"),
        (dict(policy="lru", budget=64), "unknown policy"),
        (dict(policy="tova"), "needs a budget"),
        (dict(policy="tova", budget=10, evict_ratio=0.5, n_ctx=100), "not both"),
        (dict(policy="tova", evict_ratio=1.5, n_ctx=100), "evict_ratio"),
        (dict(policy="snapkv", budget=64, pool_kernel=4), "odd pool_kernel"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, options, message):
    # the model path does not even exist: validation must come first
    with pytest.raises(ValueError, match=message):
        Engine.load(str(tmp_path / "never-read.gguf"), **options)


def test_sliding_window_layers_keep_their_window(tiny_model_dir):
    """Gemma 3: local layers drop what their window no longer sees, global layers follow the
    budget. With a budget above the prompt, only out-of-window tokens go, so the logits stay
    those of the unbounded engine up to the order in which the attention kernel sums the
    (moved) slots in float16: on this chaotic random model that is <= 0.5 against logits of
    std ~8.6, with identical top-1 everywhere. A wrong mask or a lost token shows as O(std)."""
    from tiny_models import GEMMA_WINDOW, write_tiny_model

    path = write_tiny_model(tiny_model_dir / "gemma-swa.gguf", "gemma3", seed=4)
    tokens = random_prompt(100, seed=12)
    full = Engine.load(str(path), n_ctx=256, n_batch=8).logits(tokens)
    eng = Engine.load(str(path), n_ctx=256, n_batch=8, policy="snapkv", budget=120, tau=4)
    logits = eng.logits(tokens)
    assert np.abs(logits - full).max() <= 0.5
    assert np.array_equal(logits.argmax(1), full.argmax(1))
    cached = eng.stats()["tokens_cached"]
    hp = eng.hparams
    for il in range(hp.n_layer):
        if hp.is_swa(il):
            assert cached[il] <= GEMMA_WINDOW
            assert _kept(eng, il) == set(range(100 - GEMMA_WINDOW, 100))
        else:
            assert cached[il] == 100
    small = Engine.load(str(path), n_ctx=256, n_batch=8, policy="snapkv", budget=12, tau=4)
    small.logits(tokens)
    assert max(small.stats()["tokens_cached"]) <= 12  # budget < window: the policy rules every layer


@pytest.mark.parametrize("n", [0, 1, 2, 40, 1056])
def test_sliding_max_is_the_max_of_each_centred_window(n):
    from indexmem.engine.policies.snapkv import sliding_max

    rng = np.random.default_rng(n)
    x = rng.standard_normal(n)
    x[rng.random(n) < 0.1] = -np.inf  # slots nothing scored yet
    for kernel in (1, 3, 5, 7, 15, 31, 33, 63):
        half = kernel // 2
        expected = np.array([x[max(0, i - half) : i + half + 1].max() for i in range(n)]).reshape(n)
        np.testing.assert_array_equal(sliding_max(x, kernel), expected, err_msg=f"kernel {kernel}")

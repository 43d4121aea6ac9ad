"""The public Engine API on a tiny model: generation modes, cache reuse, limits, stats."""

import numpy as np
import pytest
from indexmem import ContextOverflowError, Engine
from tiny_models import random_prompt


@pytest.fixture()
def engine(tiny_llama):
    return Engine.load(str(tiny_llama), n_ctx=128, n_batch=16)


def test_stream_and_text_agree(engine):
    prompt = random_prompt(20, seed=1)
    text = engine.generate(prompt, max_tokens=12)
    engine.reset()
    assert "".join(engine.generate(prompt, max_tokens=12, stream=True)) == text


def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_cache(engine, tiny_llama):
    prompt = random_prompt(30, seed=2)
    first = list(engine.generate_tokens(prompt, max_tokens=8, stop_at_eog=False))
    # continue the conversation: the cache already holds prompt + first[:-1]
    follow = prompt + first + random_prompt(5, seed=3)[1:]
    reused = list(engine.generate_tokens(follow, max_tokens=8, stop_at_eog=False))
    fresh_engine = Engine.load(str(tiny_llama), n_ctx=128, n_batch=16)
    fresh = list(fresh_engine.generate_tokens(follow, max_tokens=8, stop_at_eog=False))
    assert reused == fresh
    # and a prompt that diverges early drops the cached suffix
    other = prompt[:10] + random_prompt(10, seed=4)[1:]
    assert list(engine.generate_tokens(other, max_tokens=8, stop_at_eog=False)) == list(
        fresh_engine.generate_tokens(other, max_tokens=8, stop_at_eog=False)
    )


def test_logits_are_independent_of_previous_calls(engine):
    a, b = random_prompt(25, seed=5), random_prompt(40, seed=6)
    first = engine.logits(a)
    engine.logits(b)
    np.testing.assert_array_equal(engine.logits(a), first)


def test_prompt_over_the_context_is_refused(engine):
    with pytest.raises(ContextOverflowError):
        engine.logits(random_prompt(129, seed=7))


def test_generation_stops_at_the_context_end(engine):
    out = list(engine.generate_tokens(random_prompt(120, seed=8), max_tokens=50, stop_at_eog=False))
    assert len(out) == 128 - 120 + 1  # the last sampled token needs no cache slot


def test_bad_token_ids_and_options(engine, tiny_llama):
    with pytest.raises(ValueError):
        engine.logits([1, 10_000])
    with pytest.raises(ValueError):
        engine.logits([])
    with pytest.raises(TypeError, match="unknown option"):
        Engine.load(str(tiny_llama), bogus=3)


def test_stats(engine):
    engine.logits(random_prompt(33, seed=9))
    s = engine.stats()
    assert s["tokens_cached"] == [33] * engine.hparams.n_layer
    assert s["tokens_seen"] == 33
    hp = engine.hparams
    assert s["kv_bytes"] >= 2 * hp.n_layer * hp.n_embd_kv * 128 * 2  # K and V, f16
    engine.reset()
    assert engine.stats()["tokens_cached"] == [0] * hp.n_layer


def test_decode_reuses_one_graph(engine):
    list(engine.generate_tokens(random_prompt(10, seed=10), max_tokens=40, stop_at_eog=False))
    assert engine.stats()["graphs_built"] <= 3  # one prefill graph, one decode graph (+1 at most)


def test_an_intermediate_captured_only_at_a_later_step_is_the_one_computed(tiny_llama):
    """ggml's allocator reuses its last placement for a graph of the same nodes without looking
    at which tensors are outputs: a capture first asked for at a later step must still read the
    values the step computed, not what later tensors wrote over them."""
    names = ["Qcur-0", "Kcur-0", "attn_norm-0", "Qcur-1"]
    tokens = random_prompt(24, seed=4)
    captured = {}
    for when in ("every step", "last step"):
        engine = Engine.load(str(tiny_llama), n_ctx=64, n_batch=8)
        for c in range(3):
            asked = names if when == "every step" or c == 2 else []
            _, cap = engine.runner.step(
                np.array(tokens[8 * c : 8 * c + 8]), np.arange(8 * c, 8 * c + 8), capture=asked
            )
        captured[when] = cap
        engine.close()
    for name in names:
        np.testing.assert_array_equal(captured["last step"][name], captured["every step"][name])

"""Context shift: re-rotated keys equal keys stored at the new positions; a bounded cache runs
past the model's context."""

import numpy as np
import pytest
from indexmem import ContextOverflowError, Engine
from indexmem.engine.context_shift import shift_positions, shifted_positions
from tiny_models import random_prompt, write_tiny_model

# f16 K re-rounded after the rotation: the same order as the cache's own rounding
LOGIT_RTOL = 5e-3


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    return write_tiny_model(
        root / f"{request.param}.gguf", request.param, seed=5, all_f32=True, n_ctx_train=4096
    )


def test_shifted_keys_equal_keys_written_at_the_new_positions(model):
    tokens = np.array(random_prompt(40, seed=1), dtype=np.int32)
    nxt, offset = np.array([7], dtype=np.int32), 1000
    moved = Engine.load(str(model), n_ctx=2048, n_batch=64)
    moved.runner.step(tokens, np.arange(offset, offset + len(tokens)))
    shift_positions(moved.runner, offset, sinks=0)
    assert moved.cache.tables[0].positions[: len(tokens)].tolist() == list(range(len(tokens)))
    a, _ = moved.runner.step(nxt, np.array([len(tokens)]))
    direct = Engine.load(str(model), n_ctx=2048, n_batch=64)
    direct.runner.step(tokens, np.arange(len(tokens)))
    b, _ = direct.runner.step(nxt, np.array([len(tokens)]))
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err < LOGIT_RTOL
    # and the shift did something: unshifted keys at the same positions give other logits
    stale = Engine.load(str(model), n_ctx=2048, n_batch=64)
    stale.runner.step(tokens, np.arange(offset, offset + len(tokens)))
    stale.cache.tables[0].positions[: len(tokens)] -= offset
    c, _ = stale.runner.step(nxt, np.array([len(tokens)]))
    assert np.abs(c - b).max() / np.abs(b).max() > 20 * LOGIT_RTOL


def test_old_positions_gather_after_the_sinks():
    pos = np.array([0, 1, 2, 3, 10, 500, 900, 1400, -1], dtype=np.int32)
    assert shifted_positions(pos, 1000, sinks=4).tolist() == [0, 1, 2, 3, 4, 4, 4, 400, -1]


def test_a_bounded_cache_generates_past_the_context(model):
    eng = Engine.load(str(model), policy="snapkv", budget=48, n_ctx=128, n_batch=16)
    prompt = random_prompt(100, seed=2)
    out = list(eng.generate_tokens(prompt, max_tokens=300, stop_at_eog=False))
    assert len(out) == 300
    st = eng.stats()
    assert st["conversation_tokens"] == 100 + 299 and st["position_shift"] >= 256
    for table in eng.cache.tables:
        assert 0 <= table.positions[table.positions >= 0].max() < 128
    # a prompt longer than the context is fine too, and continuing the conversation reuses it
    long = random_prompt(500, seed=3)
    reply = list(eng.generate_tokens(long, max_tokens=4, stop_at_eog=False))
    fed = []
    step = eng.runner.step
    eng.runner.step = lambda tokens, *a, **k: fed.append(len(tokens)) or step(tokens, *a, **k)
    eng.generate(long + reply + [11, 12], max_tokens=2)
    assert sum(fed) == 3 + 1  # the last reply token and the new ones, then one decode step


def test_a_full_cache_still_stops_at_the_context(model):
    eng = Engine.load(str(model), n_ctx=128, n_batch=16)
    assert len(list(eng.generate_tokens(random_prompt(120, seed=4), max_tokens=50, stop_at_eog=False))) == 9
    with pytest.raises(ContextOverflowError):
        list(eng.generate_tokens(random_prompt(129, seed=4), max_tokens=1))

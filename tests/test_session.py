"""Session files: exact continuation in a new engine, fixed size, refusal of bad files."""

import numpy as np
import pytest
from indexmem import Engine
from indexmem.engine.session import SessionError
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)
from tiny_models import random_prompt


def _engine(base, side, **kw):
    return Engine.load(
        str(base),
        policy="indexmem",
        indexmem=str(side),
        memory=True,
        budget=48,
        window=8,
        tau=4,
        n_batch=16,
        **kw,
    )


def _run(eng, n_prompt, n_decode, seed):
    prompt = random_prompt(n_prompt, seed=seed)
    out = list(eng.generate_tokens(prompt, max_tokens=n_decode, stop_at_eog=False))
    return prompt + out


def test_a_restored_session_continues_with_identical_logits(setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    history = _run(eng, 150, 20, seed=1)
    assert sum(eng.stats()["tokens_evicted"]) > 0 and eng.cache.indexmem.memory_used
    eng.save_session(tmp_path / "s.session")
    follow = history + random_prompt(12, seed=2)[1:]
    expected = eng.generate(follow, max_tokens=8)  # continue in the original engine
    fresh = _engine(base, side)
    fresh.load_session(tmp_path / "s.session")
    fed = []
    step = fresh.runner.step
    fresh.runner.step = lambda tokens, *a, **k: fed.append(len(tokens)) or step(tokens, *a, **k)
    assert fresh.generate(follow, max_tokens=8) == expected
    assert sum(fed) < 30  # only the new turn and the decoded tokens: the session was continued
    assert fresh.stats()["tokens_seen"] == eng.stats()["tokens_seen"]


def test_next_token_logits_after_restore_are_bit_identical(setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    history = _run(eng, 120, 10, seed=3)
    eng.save_session(tmp_path / "a.session")
    nxt = np.array([history[-1] % 50 + 300], dtype=np.int32)
    pos = np.array([len(history)], dtype=np.int32)
    fresh = _engine(base, side)
    fresh.load_session(tmp_path / "a.session")
    a, _ = eng.runner.step(nxt, pos)
    b, _ = fresh.runner.step(nxt, pos)
    np.testing.assert_array_equal(a, b)


def test_file_size_does_not_depend_on_the_conversation_length(setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    sizes = []
    for n in (1000, 10000):
        eng = _engine(base, side)
        eng.token_nll(random_prompt(n, seed=4))
        eng.save_session(tmp_path / f"{n}.session")
        sizes.append((tmp_path / f"{n}.session").stat().st_size)
    assert sizes[0] == sizes[1]


def test_corrupt_and_foreign_sessions_are_refused_and_change_nothing(setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    _run(eng, 100, 5, seed=5)
    path = tmp_path / "good.session"
    eng.save_session(path)
    raw = path.read_bytes()
    target = _engine(base, side)
    before = target.logits(random_prompt(30, seed=6))
    cases = {
        "flipped": raw[:200] + bytes([raw[200] ^ 1]) + raw[201:],
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "not a session": b"GGUF" + raw[4:],
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.session"
        bad.write_bytes(data)
        with pytest.raises(SessionError):
            target.load_session(bad)
    with pytest.raises(SessionError, match="budget"):
        Engine.load(
            str(base),
            policy="indexmem",
            indexmem=str(side),
            memory=True,
            budget=64,
            window=8,
            tau=4,
            n_batch=16,
        ).load_session(path)
    with pytest.raises(
        SessionError,
        match=r"saved with the latent memory; load it into an engine made with "
        r"memory=True \(--memory\)",
    ):
        _engine_no_memory = Engine.load(
            str(base),
            policy="indexmem",
            indexmem=str(side),
            memory=False,
            budget=48,
            window=8,
            tau=4,
            n_batch=16,
        )
        _engine_no_memory.load_session(path)
    with pytest.raises(SessionError):
        target.load_session(tmp_path / "missing.session")
    np.testing.assert_array_equal(target.logits(random_prompt(30, seed=6)), before)


def test_a_session_of_another_model_is_refused(setup, tiny_llama, tmp_path):  # noqa: F811
    base, _, _ = setup
    a = Engine.load(str(base), policy="streaming", budget=32, n_batch=16)
    a.token_nll(random_prompt(80, seed=7))
    a.save_session(tmp_path / "a.session")
    b = Engine.load(str(tiny_llama), policy="streaming", budget=32, n_batch=16)
    with pytest.raises(SessionError, match="another model"):
        b.load_session(tmp_path / "a.session")
    with pytest.raises(SessionError, match="keydiff"):
        Engine.load(str(base), policy="keydiff", budget=32).save_session(tmp_path / "k.session")
    assert not (tmp_path / "k.session").exists()

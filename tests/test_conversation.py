"""Conversations fed turn by turn, the embedding API's cancel and thread safety."""

import threading

import numpy as np
import pytest
from indexmem import Engine
from indexmem.engine.conversation import TurnTemplate
from indexmem.engine.loader import open_gguf
from indexmem.engine.tokenizer import Tokenizer
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)

TURNS = ["tell me about ships", "and the sea?", "why is it blue", "what about rivers", "thanks, and lakes"]


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
        n_ctx=256,
        **kw,
    )


def _history(engine) -> list[int]:
    return engine.feeder.history.tokens.tolist()


@pytest.mark.parametrize("which", ["chatml-fallback", "gemma-fallback", "smollm2"])
def test_turn_parts_rebuild_the_template(which, tiny_llama, default_model_path):
    path = default_model_path if which == "smollm2" else tiny_llama
    with open_gguf(path) as g:
        tok = Tokenizer(
            path, g.get("tokenizer.chat_template"), "gemma3" if which == "gemma-fallback" else "llama"
        )
    marker = {
        "chatml-fallback": "<|im_start|>user",
        "gemma-fallback": "<start_of_turn>user",
        "smollm2": "<|im_start|>",
    }
    assert marker[which] in tok.apply_chat_template([{"role": "user", "content": "x"}])
    parts = TurnTemplate(tok.apply_chat_template)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    rebuilt = parts.first("Hi there", "Be brief.") + "Hello!" + parts.close + parts.next("Bye")
    assert rebuilt == tok.apply_chat_template(msgs, add_assistant=True)
    assert parts.close.strip()


def test_each_turn_feeds_only_its_own_tokens_and_closes_the_reply(setup):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    conv = eng.conversation(system="You are terse.")
    close = eng.tokenize(conv.template.close, add_special=False)
    fed = []
    step = eng.runner.step
    eng.runner.step = lambda tokens, *a, **k: fed.append(len(tokens)) or step(tokens, *a, **k)
    for i, text in enumerate(TURNS):
        before = len(eng.feeder.history)
        turn = conv.template.first(text, conv.system) if i == 0 else conv.template.next(text)
        turn_ids = eng.tokenize(turn, add_special=i == 0)
        n_fed = sum(fed)
        conv.say(text, max_tokens=12)
        hist = _history(eng)
        assert hist[before : before + len(turn_ids)] == turn_ids
        assert hist[-len(close) :] == close
        assert sum(fed) - n_fed == len(hist) - before  # nothing re-fed
    st = eng.stats()
    assert st["conversation_tokens"] > 48 and max(st["tokens_cached"]) <= 48 + 4 + 16


def test_a_saved_conversation_continues_in_a_new_engine(setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    conv = eng.conversation()
    for text in TURNS[:3]:
        conv.say(text, max_tokens=20)
    eng.save_session(tmp_path / "c.session")
    fresh = _engine(base, side)
    fresh.load_session(tmp_path / "c.session")
    resumed = fresh.conversation(resume=True)
    assert resumed.started
    assert resumed.say(TURNS[3], max_tokens=20) == conv.say(TURNS[3], max_tokens=20)
    nxt = eng.tokenize(" next", add_special=False)
    np.testing.assert_array_equal(fresh.feeder.feed(nxt), eng.feeder.feed(nxt))


def test_cancel_stops_a_reply_and_leaves_the_turn_closed(setup):  # noqa: F811
    base, side, _ = setup
    eng = _engine(base, side)
    conv = eng.conversation()
    cancel = threading.Event()
    pieces = []
    for piece in conv.say(TURNS[0], max_tokens=200, stream=True, cancel=cancel, temperature=1.0, seed=1):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert len(pieces) <= 4  # at most a held-back UTF-8 tail after the third piece
    close = eng.tokenize(conv.template.close, add_special=False)
    assert _history(eng)[-len(close) :] == close
    assert conv.say(TURNS[1], max_tokens=5) is not None  # the conversation goes on


def test_engine_cancel_from_another_thread(tiny_llama):
    eng = Engine.load(str(tiny_llama), policy="streaming", budget=64, n_ctx=256, n_batch=16)
    started, out = threading.Event(), []

    def run():
        for token in eng.generate_tokens([1, 5, 6, 7], max_tokens=100_000, stop_at_eog=False):
            out.append(token)
            started.set()

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    eng.cancel()
    worker.join(30)
    assert not worker.is_alive() and 0 < len(out) < 100_000


def test_concurrent_calls_give_the_sequential_results(tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=256, n_batch=16)
    prompts = [[1, 10 + i, 20 + i, 30 + i] for i in range(4)]
    expected = [eng.generate(p, max_tokens=16) for p in prompts]
    results = [None] * len(prompts)

    def run(i):
        results[i] = eng.generate(prompts[i], max_tokens=16)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected

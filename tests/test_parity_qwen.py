"""The registry's Qwen2.5-Coder Instruct GGUFs (0.5B and 1.5B, Q4_K_M) against llama.cpp on the
same file: the first real qwen2 files the engine meets.

Same tolerances as the SmolLM2 parity test (``test_parity_real.py``), with flash attention on
both sides: identical kernels and buffer layouts, so top-1 agreement >= 99% over 512 positions of real text and max |diff| <= 1e-3,
and 32 greedy tokens of a chat prompt identical.
"""

import numpy as np
import pytest
from conftest import match_llama_cpp
from indexmem import Engine
from parity import reference_greedy, reference_logits, report
from test_parity_real import real_text

QWEN = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]


@pytest.fixture(scope="module", params=QWEN)
def qwen(request):
    from indexmem.engine.registry import resolve

    path = resolve(request.param)
    engine = Engine.load(str(path), n_ctx=1024, attention="flash", **match_llama_cpp())
    yield request.param, path, engine
    engine.close()


def test_top1_agreement_over_512_positions_of_real_text(qwen):
    name, path, engine = qwen
    assert engine.hparams.arch == "qwen2"
    tokens = engine.tokenize(real_text())[:512]
    assert len(tokens) == 512
    ours = engine.logits(tokens)
    ref = reference_logits(path, tokens, n_ctx=1024)
    diff = report(f"{name} 512 positions", ours, ref)
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.99
    assert diff.max() <= 1e-3


def test_32_greedy_tokens_of_a_chat_prompt_identical(qwen):
    name, path, engine = qwen
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    prompt = engine.tokenize(engine.chat_prompt(messages))
    ours = list(engine.generate_tokens(prompt, max_tokens=32, stop_at_eog=False))
    assert ours == reference_greedy(path, prompt, 32, n_ctx=1024)
    assert len(set(ours)) > 5

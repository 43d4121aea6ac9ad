"""The chat's default sampling on the default model: first replies that do not loop.

A loop is an 8-token sequence that occurs three or more times in one reply. Greedy decoding (the
chat's old default) loops on the issue's example turn, which shows the measure can fail. Which
greedy replies loop depends on rounding (after a few dozen tokens the attention paths' last-bit
differences pick other words), so that check runs on the flash path, whose logits are llama.cpp's
bit for bit with flash attention on.
"""

from collections import Counter

import pytest
from indexmem import Engine
from indexmem.engine.sampling import GREEDY

ADA = "My name is Ada and my locker code is 4471. Please remember it."
FIRST_TURNS = [
    ADA,
    "Write a short poem about autumn.",
    "Tell me about the sea.",
    "Explain how a bicycle works.",
    "What is a good name for a cat?",
]


def most_repeated_8gram(tokens: list[int]) -> int:
    counts = Counter(tuple(tokens[i : i + 8]) for i in range(len(tokens) - 7))
    return max(counts.values(), default=0)


@pytest.fixture(scope="module")
def engine(default_model_path):
    return Engine.load(str(default_model_path), n_ctx=2048)


def first_reply(engine, text: str, **sampling) -> list[int]:
    prompt = engine.conversation().template.first(text, None)
    return list(engine.generate_tokens(prompt, max_tokens=256, **sampling))


def test_greedy_loops_on_the_issues_example(default_model_path):
    flash = Engine.load(str(default_model_path), n_ctx=2048, attention="flash")
    assert most_repeated_8gram(first_reply(flash, ADA, sampling=GREEDY)) >= 3


@pytest.mark.parametrize("seed", [0, 1])
def test_first_turns_with_the_chat_defaults_do_not_loop(engine, seed):
    for text in FIRST_TURNS:
        reply = first_reply(engine, text, sampling=engine.sampling_defaults, seed=seed)
        assert len(reply) > 8, text
        assert most_repeated_8gram(reply) < 3, (text, engine.detokenize(reply))

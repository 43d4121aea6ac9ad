"""Prompts as the model reads them, and fitting a task's haystack to a token length.

A task's text goes into a user turn of the model's chat template when it has one; the answer
prefix (RULER's "The special magic number for ... is") follows the template, so the model's reply
continues it. ``fit_length`` finds how much haystack makes the prompt as long as requested."""

from __future__ import annotations

import re
from collections.abc import Callable

# length a fitted prompt may fall short of its target before the search stops early (the 2% the
# suite promises is then met wherever one haystack unit is shorter than 2% of the target)
EARLY_STOP = 0.004
TOLERANCE = 0.02


class PromptTooLong(ValueError):
    pass


class HaystackTooShort(ValueError):
    pass


def tokenizer_of(engine_or_tokenizer):
    """An ``Engine`` or a bare ``Tokenizer``: both render prompts the same way."""
    return getattr(engine_or_tokenizer, "tokenizer", engine_or_tokenizer)


def render_prompt(engine_or_tokenizer, text: str, answer_prefix: str = "") -> list[int]:
    tok = tokenizer_of(engine_or_tokenizer)
    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_assistant=True)
    return tok.encode(text + answer_prefix, add_special=True)


def fit_length(render: Callable[[int], list[int]], target: int, n_max: int) -> tuple[int, list[int]]:
    """The largest haystack size ``n`` in [0, n_max] whose prompt ``render(n)`` has at most
    ``target`` tokens, with its tokens. ``render`` must grow with ``n`` (more words, sentences,
    documents...). The search interpolates on the measured lengths, so a few tokenizations
    suffice; it stops as soon as the prompt is within ``EARLY_STOP`` of the target."""
    seen: dict[int, list[int]] = {}

    def length(n: int) -> int:
        if n not in seen:
            seen[n] = render(n)
        return len(seen[n])

    lo, hi = 0, None  # render(lo) fits, render(hi) does not
    if length(0) > target:
        raise PromptTooLong(
            f"the task's fixed text alone has {length(0)} tokens, more than the {target} asked for"
        )
    enough = target - int(target * EARLY_STOP)
    for step in range(64):
        if length(lo) >= enough or lo == n_max or (hi is not None and hi - lo <= 1):
            break
        if hi is None:  # extrapolate from the slope seen so far (one unit first, to measure it)
            if lo == 0:
                guess = 1
            else:
                slope = (length(lo) - length(0)) / lo
                guess = min(n_max, max(lo + 1, lo + int((target - length(lo)) / max(slope, 1e-3))))
        elif step % 3 == 2:  # a bisection now and then keeps interpolation from crawling
            guess = (lo + hi) // 2
        else:
            slope = (length(hi) - length(lo)) / (hi - lo)
            guess = lo + int((target - length(lo)) / max(slope, 1e-3))
        if hi is not None:
            guess = min(max(guess, lo + 1), hi - 1)
        if length(guess) <= target:
            lo = guess
        else:
            hi = guess
    if lo == n_max and length(lo) < target * (1 - TOLERANCE):
        raise HaystackTooShort(
            f"all of the haystack ({n_max} units) makes {length(lo)} tokens, short of the {target} asked for"
        )
    return lo, seen[lo]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of prose: a break after . ! or ? followed by space and a capital or a digit
    (abbreviations may split a sentence; a needle placed there is still between words)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def insert_at_depths(pieces: list[str], inserts: list[str], depths: list[float]) -> list[str]:
    """``pieces`` with ``inserts[i]`` placed before piece ``int(len(pieces) * depths[i])`` (at the
    end for depth 1); inserts at the same place keep their order."""
    at = sorted(((min(len(pieces), int(len(pieces) * d)), i) for i, d in enumerate(depths)))
    out, k = [], 0
    for pos, i in at:
        out += pieces[k:pos]
        out.append(inserts[i])
        k = pos
    return out + pieces[k:]


def join_with_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]

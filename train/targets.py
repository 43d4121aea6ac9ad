"""Training windows for the end-to-end memory fit: token sequences and the positions whose
next-token distributions the bounded model must match, always after the text it evicted.

- retrieval windows (``retrieval.py``): the answers to the questions at the end, asked about
  facts spliced into the haystack, which chunked prefill has mostly evicted by then;
- plain windows (``data.token_windows``): the last ``tail`` tokens, a continuation of text whose
  start the bounded cache no longer holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import token_windows
from .retrieval import BROAD, retrieval_windows


@dataclass
class TargetWindow:
    tokens: list[int]
    targets: list[int]  # positions t whose prediction of tokens[t + 1] is scored
    kind: str  # "retrieval" or "plain"


def answer_spans(tokenize, window) -> list[tuple[int, int]] | None:
    """Token range [start, end) of each answer in a retrieval window's tail, in the order asked,
    found by tokenizing the tail up to each answer; None when the tail's tokenization is not the
    concatenation of those prefixes (then the window is skipped)."""
    tail_tokens = window.tokens[window.questions_start :]
    spans, text = [], "\n\n"
    for i, fact in enumerate(window.asked):
        text += ("\n" if i else "") + f"Question: {fact.question} Answer:"
        start = len(tokenize(text))
        text += f" {fact.answer}"
        end = len(tokenize(text))
        if tokenize(text) != tail_tokens[:end]:
            return None
        spans.append((window.questions_start + start, window.questions_start + end))
    return spans


def answer_targets(tokenize, window) -> list[int] | None:
    """Positions predicting the answer tokens (the token before each one)."""
    spans = answer_spans(tokenize, window)
    return None if spans is None else [t - 1 for a, b in spans for t in range(a, b)]


def retrieval_targets(
    tokenizer, text: str, length: int, count: int, facts: int, seed: int, distractors: int = 0
):
    def tokenize(s, add_special=False):
        return tokenizer.encode(s, add_special=add_special)

    out = []
    for w in retrieval_windows(_Tokenizing(tokenizer), text, length, count, facts, seed, BROAD, distractors):
        targets = answer_targets(tokenize, w)
        if targets:
            out.append(TargetWindow(w.tokens, targets, "retrieval"))
    return out


def plain_targets(tokenizer, text: str, length: int, count: int, tail: int) -> list[TargetWindow]:
    windows = token_windows(_Tokenizing(tokenizer), text, length, count)
    return [TargetWindow(w, list(range(length - tail - 1, length - 1)), "plain") for w in windows]


class _Tokenizing:
    """What ``data.token_windows`` and ``retrieval.retrieval_windows`` call: ``tokenize``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

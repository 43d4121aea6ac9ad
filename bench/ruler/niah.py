"""Needle in a haystack, RULER's eight variants: "One of the special magic numbers for <key> is:
<value>." sentences hidden in a haystack, the values of some keys asked for at the end.

Haystacks: ``essay`` (Paul Graham's essays, needles between sentences), ``noise`` (one
paragraph of plain sentences repeated) and ``needle`` (the haystack is itself made of needles
with other keys). Keys and values are ``words`` (adjective-noun), ``numbers`` (7 digits) or
``uuids``."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from .prompt import fit_length, insert_at_depths, join_with_and, render_prompt, split_sentences
from .words import ADJECTIVES, NOUNS

NOISE = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
# RULER draws each needle's depth from 40 evenly spaced points between 0 and 100%
DEPTH_GRID = tuple(round(i / 39, 4) for i in range(40))

_ONE = (
    "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What is the special magic {kind} for {query} mentioned in the provided text?"
)
_ONE_PREFIX = " The special magic {kind} for {query} mentioned in the provided text is"
_MANY = (
    "Some special magic {kinds} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kinds} afterwards.\n{context}\n"
    "What are all the special magic {kinds} for {query} mentioned in the provided text?"
)
_MANY_PREFIX = " The special magic {kinds} for {query} mentioned in the provided text are"


@dataclass(frozen=True)
class NiahVariant:
    haystack: str = "essay"  # essay | noise | needle
    keys: str = "words"  # words | numbers | uuids
    values: str = "numbers"
    n_keys: int = 1  # needles with distinct keys
    n_values: int = 1  # needles (values) per key
    n_queries: int = 1  # keys asked for


def random_item(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle kind {kind!r}: numbers, words or uuids")


def generate(
    variant: NiahVariant,
    tokenizer,
    target: int,
    rng: random.Random,
    essay_words: list[str] | None = None,
    depths: list[float] | None = None,
) -> dict:
    """A prompt of about ``target`` tokens and the values it asks for. ``depths`` (one per
    needle, fractions of the haystack) places the needles; by default they are drawn."""
    n_keys = max(variant.n_keys, variant.n_queries)
    keys: list[str] = []
    while len(keys) < n_keys:
        key = random_item(variant.keys, rng)
        if key not in keys:
            keys.append(key)
    values = [[random_item(variant.values, rng) for _ in range(variant.n_values)] for _ in keys]
    needles = [NEEDLE.format(kind=variant.values, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    if depths is None:
        depths = sorted(rng.sample(DEPTH_GRID, len(needles)))
    elif len(depths) != len(needles) or not all(0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"{len(needles)} needle(s) need {len(needles)} depth(s) in [0, 1], got {depths}")
    asked = sorted(rng.sample(range(n_keys), variant.n_queries))
    query = join_with_and([keys[i] for i in asked])
    answers = [v for i in asked for v in values[i]]

    singular = len(answers) == 1
    kind = variant.values[:-1] if singular else variant.values
    template, prefix = (_ONE, _ONE_PREFIX) if singular else (_MANY, _MANY_PREFIX)
    answer_prefix = prefix.format(kind=kind, kinds=kind, query=query)
    haystack = _Haystack(variant, rng, essay_words, set(keys))

    def render(n: int) -> list[int]:
        context = haystack.context(n, needles, depths)
        return render_prompt(
            tokenizer, template.format(kind=kind, kinds=kind, context=context, query=query), answer_prefix
        )

    n, ids = fit_length(render, target, haystack.n_max(target))
    return dict(input_ids=ids, answers=answers, depths=list(depths), haystack_units=n)


class _Haystack:
    """``context(n, ...)``: the first ``n`` units of the haystack (words of the essays, noise
    sentences or distractor needles) with the needles placed at their depths."""

    def __init__(self, variant: NiahVariant, rng: random.Random, essay_words, taken_keys: set[str]):
        self.variant = variant
        if variant.haystack == "essay":
            if not essay_words:
                raise ValueError("the essay haystack needs the essays' words")
            self.words = essay_words
        elif variant.haystack == "needle":
            self._rng = random.Random(rng.getrandbits(64))  # its own stream: more lines, same first ones
            self._taken = taken_keys
            self._lines: list[str] = []
        elif variant.haystack != "noise":
            raise ValueError(f"unknown haystack {variant.haystack!r}: essay, noise or needle")

    def n_max(self, target: int) -> int:
        if self.variant.haystack == "essay":
            return len(self.words)
        return 4 * target  # every sentence or line is more than a token, so never reached

    def _distractors(self, n: int) -> list[str]:
        while len(self._lines) < n:
            key = random_item(self.variant.keys, self._rng)
            if key not in self._taken:
                self._lines.append(
                    NEEDLE.format(
                        kind=self.variant.values, key=key, value=random_item(self.variant.values, self._rng)
                    )
                )
        return self._lines[:n]

    def context(self, n: int, needles: list[str], depths: list[float]) -> str:
        kind = self.variant.haystack
        if kind == "essay":
            return " ".join(insert_at_depths(split_sentences(" ".join(self.words[:n])), needles, depths))
        if kind == "noise":
            sentences = [NOISE[i % len(NOISE)] for i in range(n)]
            return " ".join(insert_at_depths(sentences, needles, depths)).replace("again. ", "again.\n")
        return "\n".join(insert_at_depths(self._distractors(n), needles, depths))

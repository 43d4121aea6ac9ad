"""Frequent-words extraction (RULER's fwe): a text of made-up 6-letter words whose counts follow
a Zipf (zeta) law; the most frequent "word" is the noise "...", the model names the next three."""

from __future__ import annotations

import random
import string

from .prompt import fit_length, render_prompt

NOISE_WORD = "..."

TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


def zeta(alpha: float, terms: int = 10_000) -> float:
    """Riemann zeta for alpha > 1: a partial sum plus its Euler-Maclaurin tail."""
    head = sum(k**-alpha for k in range(1, terms))
    return head + terms ** (1 - alpha) / (alpha - 1) + 0.5 * terms**-alpha


def counts(n_words: int, vocab_size: int, alpha: float) -> list[int]:
    """How often each rank appears in a text of about ``n_words`` words."""
    z = zeta(alpha)
    return [int(n_words * k**-alpha / z) for k in range(1, vocab_size + 1)]


def generate(tokenizer, target: int, rng: random.Random, alpha: float = 2.0, word_length: int = 6) -> dict:
    vocab_size = max(8, target // 50)  # RULER's vocabulary size for a context
    coded: list[str] = [NOISE_WORD]
    while len(coded) < vocab_size:
        word = "".join(rng.choices(string.ascii_lowercase, k=word_length))
        if word not in coded:
            coded.append(word)
    shuffle_seed = rng.getrandbits(64)

    def render(n: int) -> list[int]:
        text = [w for w, c in zip(coded, counts(n, vocab_size, alpha)) for _ in range(c)]
        random.Random(shuffle_seed).shuffle(text)
        return render_prompt(tokenizer, TEMPLATE.format(context=" ".join(text)), ANSWER_PREFIX)

    n, ids = fit_length(render, target, 8 * target)
    return dict(input_ids=ids, answers=coded[1:4], haystack_units=n)

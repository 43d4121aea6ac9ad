"""Common-words extraction (RULER's cwe): a numbered list of words in which ten appear far more
often than the rest; the model names those ten. A short solved list precedes the task, as in
RULER. Below 4,096 tokens the repeats are lower (6 against 1), as RULER does for short contexts."""

from __future__ import annotations

import random

from .prompt import HaystackTooShort, fit_length, render_prompt

TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the {n_common} most common words in the above list?"
)
ANSWER_PREFIX = " Answer: The top {n_common} words that appear most often in the list are:"


def repeats(target: int) -> tuple[int, int, int, int, int]:
    """(repeats of a common word, of an uncommon one; words, common repeats and uncommon repeats
    of the solved example) for a prompt of ``target`` tokens."""
    return (30, 3, 40, 10, 3) if target >= 4096 else (6, 1, 20, 3, 1)


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def word_list(
    common: list[str], uncommon: list[str], common_repeats: int, uncommon_repeats: int, seed: int
) -> list[str]:
    words = common * common_repeats + uncommon * uncommon_repeats
    random.Random(seed).shuffle(words)
    return words


def generate(tokenizer, target: int, rng: random.Random, vocabulary: list[str], n_common: int = 10) -> dict:
    common_reps, uncommon_reps, example_size, example_common_reps, example_uncommon_reps = repeats(target)
    pool = sorted(set(vocabulary))
    if len(pool) < example_size + n_common + 1:
        raise HaystackTooShort(
            f"the common-words task needs more than {example_size + n_common} distinct words, "
            f"the vocabulary has {len(pool)}"
        )
    order = rng.sample(pool, len(pool))
    example_words, words = order[:example_size], order[example_size:]
    common, uncommon = words[:n_common], words[n_common:]
    example_common = example_words[:n_common]
    example_list = word_list(
        example_common,
        example_words[n_common:],
        example_common_reps,
        example_uncommon_reps,
        rng.getrandbits(64),
    )
    example = (
        TEMPLATE.format(context=numbered(example_list), n_common=n_common)
        + ANSWER_PREFIX.format(n_common=n_common)
        + " "
        + numbered(example_common)
    )
    list_seed = rng.getrandbits(64)
    answer_prefix = ANSWER_PREFIX.format(n_common=n_common)

    def render(n: int) -> list[int]:
        listed = word_list(common, uncommon[:n], common_reps, uncommon_reps, list_seed)
        return render_prompt(
            tokenizer,
            example + "\n" + TEMPLATE.format(context=numbered(listed), n_common=n_common),
            answer_prefix,
        )

    n, ids = fit_length(render, target, len(uncommon))
    return dict(input_ids=ids, answers=list(common), haystack_units=n)

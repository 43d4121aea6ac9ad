"""RULER's 13 tasks by their RULER names: generator, metric, answer length.

``generate_sample(name, tokenizer, length, seed, index, data)`` gives a sample dict: ``task``,
``index``, ``seed``, ``target`` (tokens asked for), ``length`` (prompt tokens), ``input_ids``,
``answers`` and, for the needle tasks, ``depths``. A sample depends only on (task, seed, index,
length, tokenizer); its needles, keys and questions do not depend on the length."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from . import common_words, frequent_words, niah, qa, variable_tracking
from .data import RulerData
from .niah import NiahVariant
from .prompt import HaystackTooShort, PromptTooLong
from .scoring import string_match_all, string_match_part


@dataclass(frozen=True)
class Task:
    name: str
    short: str  # column title in tables
    family: str  # niah, variable_tracking, common_words, frequent_words, qa
    metric: Callable[[str, list[str]], float]
    max_new_tokens: int  # RULER's tokens_to_generate for the family
    make: Callable  # (tokenizer, target, rng, data, seed, index, depths) -> partial sample
    needs: tuple[str, ...] = ()  # RulerData parts it reads


def _niah_task(name: str, short: str, variant: NiahVariant) -> Task:
    def make(tokenizer, target, rng, data, seed, index, depths):
        words = data.essay_words if variant.haystack == "essay" else None
        return niah.generate(variant, tokenizer, target, rng, words, depths)

    return Task(
        name, short, "niah", string_match_all, 128, make, ("essays",) if variant.haystack == "essay" else ()
    )


def _qa_task(name: str, short: str, dataset: str) -> Task:
    def make(tokenizer, target, rng, data, seed, index, depths):
        questions = getattr(data, dataset)
        order = qa.question_order(questions, seed)
        return qa.generate(tokenizer, target, rng, questions, questions.questions[order[index % len(order)]])

    return Task(name, short, "qa", string_match_part, 32, make, (dataset,))


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _niah_task("niah_single_1", "S1", NiahVariant(haystack="noise")),
        _niah_task("niah_single_2", "S2", NiahVariant()),
        _niah_task("niah_single_3", "S3", NiahVariant(values="uuids")),
        _niah_task("niah_multikey_1", "MK1", NiahVariant(n_keys=4)),
        _niah_task("niah_multikey_2", "MK2", NiahVariant(haystack="needle")),
        _niah_task("niah_multikey_3", "MK3", NiahVariant(haystack="needle", keys="uuids", values="uuids")),
        _niah_task("niah_multivalue", "MV", NiahVariant(n_values=4)),
        _niah_task("niah_multiquery", "MQ", NiahVariant(n_queries=4)),
        Task(
            "vt",
            "VT",
            "variable_tracking",
            string_match_all,
            30,
            lambda tok, target, rng, data, seed, index, depths: variable_tracking.generate(tok, target, rng),
        ),
        Task(
            "cwe",
            "CWE",
            "common_words",
            string_match_all,
            120,
            lambda tok, target, rng, data, seed, index, depths: common_words.generate(
                tok, target, rng, data.vocabulary
            ),
            ("essays",),
        ),
        Task(
            "fwe",
            "FWE",
            "frequent_words",
            string_match_all,
            50,
            lambda tok, target, rng, data, seed, index, depths: frequent_words.generate(tok, target, rng),
        ),
        _qa_task("qa_1", "QA1", "squad"),
        _qa_task("qa_2", "QA2", "hotpotqa"),
    ]
}


def parse_tasks(text: str) -> list[str]:
    """``all``, ``niah`` (the eight needle tasks) or comma-separated task names."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            names += list(TASKS)
        elif part == "niah":
            names += [n for n, t in TASKS.items() if t.family == "niah"]
        elif part in TASKS:
            names.append(part)
        else:
            raise ValueError(f"unknown task {part!r}: all, niah or any of {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def generate_sample(
    name: str,
    tokenizer,
    length: int,
    seed: int,
    index: int,
    data: RulerData,
    depths: list[float] | None = None,
) -> dict:
    """Sample ``index`` of task ``name`` with a prompt of ``length`` tokens (within 2% where the
    haystack's unit allows: see ``prompt.fit_length``). ``depths`` places a needle task's needles."""
    task = TASKS[name]
    if depths is not None and task.family != "niah":
        raise ValueError(f"{name} has no needles to place at a depth")
    rng = random.Random(f"{name}/{seed}/{index}")
    try:
        sample = task.make(tokenizer, length, rng, data, seed, index, depths)
    except (PromptTooLong, HaystackTooShort) as e:
        raise type(e)(f"{name} at {length} tokens: {e}") from None
    return dict(
        task=name,
        index=index,
        seed=seed,
        target=length,
        length=len(sample["input_ids"]),
        depths=sample.get("depths"),
        answers=sample["answers"],
        input_ids=sample["input_ids"],
        haystack_units=sample["haystack_units"],
    )

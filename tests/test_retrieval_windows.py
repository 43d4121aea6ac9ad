"""Retrieval-shaped training windows: exact length, every fact inside, every question and answer
at the end, deterministic."""

import random

import pytest
from indexmem.train.data import token_windows
from indexmem.train.retrieval import ADJECTIVES, NOUNS, random_facts, retrieval_windows


class CharEngine:
    """Tokenizes one character per token (code point + 1); token 0 is BOS."""

    def tokenize(self, text, add_special=True):
        return ([0] if add_special else []) + [ord(c) + 1 for c in text]


def _text(tokens):
    return "".join(chr(t - 1) for t in tokens if t)


CORPUS = "\n".join(f"line {i} of a long play, with some words in it." for i in range(4000))


def test_windows_hold_every_fact_then_every_question_with_its_answer():
    eng = CharEngine()
    windows = retrieval_windows(eng, CORPUS, 1500, 4, facts_per_window=3, seed=5)
    assert [len(w.tokens) for w in windows] == [1500] * 4
    for w in windows:
        assert w.tokens[0] == 0 and 0 not in w.tokens[1:]
        text, facts = _text(w.tokens), w.facts
        assert len(facts) == 3
        tail = text[text.index("\n\nQuestion: ") :]
        for fact in facts:
            at = text.index(fact.statement)
            assert 0.03 * len(text) < at < text.index("\n\nQuestion: ")
            assert f"Question: {fact.question} Answer: {fact.answer}" in tail
        assert tail.count("Question: ") == 3
        assert _text(w.tokens[w.questions_start :]) == tail
        for fact, (a, b) in zip(facts, w.fact_spans):
            assert _text(w.tokens[a:b]) == f"\n{fact.statement}\n"
    assert windows == retrieval_windows(eng, CORPUS, 1500, 4, facts_per_window=3, seed=5)
    assert windows != retrieval_windows(eng, CORPUS, 1500, 4, facts_per_window=3, seed=6)


def test_the_haystack_is_the_plain_window_with_facts_spliced_in():
    eng = CharEngine()
    plain = token_windows(eng, CORPUS, 1500, 2)
    for p, w in zip(plain, retrieval_windows(eng, CORPUS, 1500, 2, facts_per_window=2, seed=1)):
        text = _text(w.tokens)
        hay = text[: text.index("\n\nQuestion: ")]
        for fact in w.facts:
            assert hay.count(f"\n{fact.statement}\n") == 1
            hay = hay.replace(f"\n{fact.statement}\n", "", 1)
        assert _text(p).startswith(hay) and len(hay) > 1000


def test_facts_have_distinct_subjects_and_too_many_facts_are_refused():
    facts = random_facts(50, random.Random(0))
    assert len({f.question for f in facts}) == 50
    assert all(f.answer in f.statement for f in facts)
    with pytest.raises(ValueError, match="too little haystack"):
        retrieval_windows(CharEngine(), CORPUS, 300, 1, facts_per_window=4)


def _wording(fact):
    """The question and the statement up to the subject (value taken out): equal for two facts in
    the same wording."""
    return fact.question.split(" the ")[0], fact.statement.replace(fact.answer, "{v}").split(" the ")[0]


def test_lookalike_windows_hide_the_asked_facts_among_same_worded_ones():
    eng = CharEngine()
    windows = retrieval_windows(eng, CORPUS, 1500, 6, facts_per_window=2, seed=3, distractors=6)
    for w in windows:
        assert len(w.tokens) == 1500 and len(w.facts) == 8 and len(w.asked) == 2
        assert all(f in w.facts for f in w.asked)
        assert len({_wording(f) for f in w.facts}) == 1  # one wording for every fact in the window
        assert len({f.question for f in w.facts}) == 8  # told apart by the subject alone
        tail = _text(w.tokens[w.questions_start :])
        assert tail.count("Question: ") == 2
        for fact in w.facts:
            assert (f"Question: {fact.question} " in tail) == (fact in w.asked)
            assert _text(w.tokens).count(f"\n{fact.statement}\n") == 1
    assert len({_wording(w.facts[0]) for w in windows}) > 1  # the wording changes between windows
    plain = retrieval_windows(eng, CORPUS, 1500, 6, facts_per_window=2, seed=3)
    assert all(
        len(w.facts) == 2 and sorted(f.question for f in w.asked) == sorted(f.question for f in w.facts)
        for w in plain
    )
    assert len({_wording(f) for w in plain for f in w.facts}) > 1


def test_training_windows_give_lookalikes_their_share_of_the_retrieval_windows():
    from indexmem.train.memory_run import training_windows

    class Tok:
        def encode(self, text, add_special=False):
            return CharEngine().tokenize(text, add_special)

    base = training_windows(Tok(), CORPUS * 3, 4000, 20, seed=0)
    mixed = training_windows(Tok(), CORPUS * 3, 4000, 20, seed=0, lookalike=0.5)
    kinds = lambda ws: sorted(w.kind for w in ws)  # noqa: E731
    assert len(base) == len(mixed) == 20 and kinds(base) == kinds(mixed)
    # a subject is named once per statement and once per question: at most 4 + 4 times in a plain
    # retrieval window, at least 9 + 1 times in a look-alike one
    subjects = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    named = lambda w: sum(_text(w.tokens).count(s) for s in subjects)  # noqa: E731
    assert max(map(named, base)) <= 8 and max(map(named, mixed)) >= 10
    with pytest.raises(ValueError, match="between 0 and 1"):
        training_windows(Tok(), CORPUS, 1200, 20, seed=0, lookalike=1.5)

"""Retrieval-shaped training windows: exact length, every fact inside, every question and answer
at the end, deterministic."""

import random

import pytest
from indexmem.train.data import token_windows
from indexmem.train.retrieval import random_facts, retrieval_windows


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

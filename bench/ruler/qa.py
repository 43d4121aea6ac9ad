"""Question answering over many documents (RULER's qa_1 on SQuAD, qa_2 on HotpotQA): the
documents that answer the question hidden among distractors.

Distractors fill the context in this order: the question's related documents (the rest of its
SQuAD article, HotpotQA's own distractor paragraphs), then documents drawn from the whole set.
The last one is cut at a word to hit the length; the gold documents are always whole. Documents
are shuffled into place."""

from __future__ import annotations

import random
import re

from .data import QADataset, Question
from .prompt import fit_length, render_prompt

TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any "
    "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the "
    "given documents. Only give me the answer and do not output any other words.\n\nQuestion: {question}"
)
ANSWER_PREFIX = " Answer:"
DOCUMENT = "Document {number}:\n{text}"


def generate(tokenizer, target: int, rng: random.Random, dataset: QADataset, question: Question) -> dict:
    fixed = list(dict.fromkeys(question.gold))
    taken = set(fixed) | set(question.related)
    # enough drawn candidates for documents of a few words each; more are never needed
    drawn = [
        d
        for d in rng.sample(range(len(dataset.docs)), min(len(dataset.docs), target // 4 + len(taken)))
        if d not in taken
    ]
    distractors = [d for d in dict.fromkeys(question.related) if d not in fixed] + drawn
    word_ends = {d: [m.end() for m in re.finditer(r"\S+", dataset.docs[d])] for d in distractors}
    place = {d: rng.random() for d in fixed + distractors}  # where each document goes when included

    def context(n_words: int) -> str:
        chosen = [(place[d], dataset.docs[d]) for d in fixed]
        for d in distractors:
            if n_words <= 0:
                break
            ends = word_ends[d]
            take = min(n_words, len(ends))
            if take:
                chosen.append((place[d], dataset.docs[d][: ends[take - 1]]))
            n_words -= take
        docs = [text for _, text in sorted(chosen)]
        return "\n\n".join(DOCUMENT.format(number=i + 1, text=t) for i, t in enumerate(docs))

    def render(n: int) -> list[int]:
        return render_prompt(
            tokenizer, TEMPLATE.format(context=context(n), question=question.question), ANSWER_PREFIX
        )

    n, ids = fit_length(render, target, sum(len(e) for e in word_ends.values()))
    return dict(input_ids=ids, answers=list(question.answers), haystack_units=n)


def question_order(dataset: QADataset, seed: int) -> list[int]:
    """The questions in a seeded order: sample ``i`` asks ``order[i]`` (each once, then again)."""
    order = list(range(len(dataset.questions)))
    random.Random(f"qa-order/{seed}").shuffle(order)
    return order

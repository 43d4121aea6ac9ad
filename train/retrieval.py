"""Retrieval-shaped training windows: corpus text with a few facts inserted at random depths and,
at the end, questions asking for every one of them, each followed by its answer. The teacher's
importance (max over every query, the questions' included) then marks the facts that a later
question needs, which plain prose never asks of a token.

The wording is this project's own and varies (numbers, words, times); evaluation data and RULER's
templates are not used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .data import token_windows

ADJECTIVES = [
    "amber",
    "silent",
    "crooked",
    "northern",
    "gilded",
    "hollow",
    "scarlet",
    "frozen",
    "velvet",
    "ancient",
    "bitter",
    "copper",
    "distant",
    "emerald",
    "narrow",
    "painted",
    "quiet",
    "rusted",
]
NOUNS = [
    "lantern",
    "harbour",
    "orchard",
    "chapel",
    "bridge",
    "cellar",
    "tower",
    "meadow",
    "vessel",
    "archive",
    "garden",
    "mill",
    "quarry",
    "stable",
    "theatre",
    "well",
    "workshop",
    "vault",
]
WORDS = [
    "marigold",
    "anchor",
    "thimble",
    "falcon",
    "lattice",
    "quill",
    "saffron",
    "tundra",
    "walnut",
    "cobalt",
    "juniper",
    "paddock",
    "riddle",
    "sparrow",
    "tinder",
    "velour",
    "wicker",
    "zephyr",
]

# (statement, question); {s} is the subject, {v} the value
TEMPLATES = [
    ("The key to the {s} is numbered {v}.", "What number is the key to the {s}?", "number"),
    ("Write this down: the password for the {s} is {v}.", "What is the password for the {s}?", "word"),
    (
        "According to the ledger, the {s} holds exactly {v} barrels.",
        "How many barrels does the {s} hold?",
        "number",
    ),
    (
        "The watchman of the {s} changes at {v} every night.",
        "At what time does the watchman of the {s} change?",
        "time",
    ),
    ("Remember that the {s} was sold for {v} crowns.", "For how many crowns was the {s} sold?", "number"),
]


# more wordings and kinds of value, for runs that ask for variety (``templates=BROAD``)
BROAD = TEMPLATES + [
    ("The code for the {s} is {v}.", "What is the code for the {s}?", "code"),
    ("Note for later: the {s} opens on {v}.", "On what date does the {s} open?", "date"),
    ("In the records, the keeper of the {s} is named {v}.", "Who is the keeper of the {s}?", "name"),
    ("Its serial reads {v}; that is the {s}.", "What does the serial of the {s} read?", "hex"),
    (
        "Remember this: {v} is the number you need for the {s}.",
        "Which number do you need for the {s}?",
        "number",
    ),
    ("config: {s} = {v}", "What value does the config set for the {s}?", "number"),
    ("The {s} is painted {v}, as everyone in town knows.", "What colour is the {s} painted?", "colour"),
]
NAMES = [
    "Agnes",
    "Bartholomew",
    "Cordelia",
    "Desmond",
    "Eleanor",
    "Fitzgerald",
    "Gwendolyn",
    "Horatio",
    "Imogen",
    "Jasper",
    "Lavinia",
    "Mortimer",
    "Ophelia",
    "Percival",
    "Rosalind",
    "Thaddeus",
]
COLOURS = ["ochre", "teal", "crimson", "ivory", "slate grey", "mustard", "lilac", "indigo", "umber"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


# (facts asked, look-alike facts not asked) of the look-alike training windows, taken in turn
LOOKALIKE_SHAPES = ((1, 8), (2, 12), (3, 16))


@dataclass
class Fact:
    statement: str
    question: str
    answer: str


def _value(kind: str, rng: random.Random) -> str:
    if kind == "number":
        digits = rng.randrange(4, 9)
        return str(rng.randrange(10 ** (digits - 1), 10**digits))
    if kind == "word":
        return rng.choice(WORDS)
    if kind == "code":
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
        return f"{letters}-{rng.randrange(1000, 10000)}-{rng.choice('ABCDEFGH')}"
    if kind == "date":
        return f"{rng.randrange(1, 29)} {rng.choice(MONTHS)}"
    if kind == "name":
        return rng.choice(NAMES)
    if kind == "hex":
        return "".join(rng.choice("0123456789abcdef") for _ in range(rng.randrange(8, 13)))
    if kind == "colour":
        return rng.choice(COLOURS)
    return f"{rng.randrange(1, 13)}:{rng.randrange(60):02d}"


def random_facts(count: int, rng: random.Random, templates=TEMPLATES, lookalike: bool = False) -> list[Fact]:
    """``count`` facts about distinct subjects, each in one of ``templates``' wordings; with
    ``lookalike`` all in one wording and kind of value, so only the subject tells them apart."""
    subjects = rng.sample([f"{a} {n}" for a in ADJECTIVES for n in NOUNS], count)
    shared = rng.choice(templates) if lookalike else None
    facts = []
    for subject in subjects:
        statement, question, kind = shared or rng.choice(templates)
        value = _value(kind, rng)
        facts.append(Fact(statement.format(s=subject, v=value), question.format(s=subject), value))
    return facts


@dataclass
class RetrievalWindow:
    tokens: list[int]
    facts: list[Fact]  # in the order they appear in the haystack
    fact_spans: list[tuple[int, int]]  # token range [start, end) of each fact's statement
    questions_start: int  # first token of the questions
    asked: list[Fact]  # the facts in the order the questions ask for them


def retrieval_windows(
    engine,
    text: str,
    length: int,
    count: int,
    facts_per_window: int,
    seed: int = 0,
    templates=TEMPLATES,
    distractors: int = 0,
) -> list[RetrievalWindow]:
    """``count`` windows of exactly ``length`` tokens: a corpus window (see ``token_windows``)
    with ``facts_per_window`` facts spliced in at random depths (5-90% of the haystack, at token
    boundaries) and the questions with their answers, in shuffled order, at the end.

    ``distractors``: that many more facts, never asked, all in the asked facts' wording and kind
    of value (look-alikes: the answer must come from the fact about the subject asked, not from
    any value that looks right)."""
    rng = random.Random(seed)
    head_len = len(engine.tokenize("", add_special=True))
    windows = []
    for body in token_windows(engine, text, length, count):
        head, hay = body[:head_len], body[head_len:]
        facts = random_facts(facts_per_window + distractors, rng, templates, lookalike=distractors > 0)
        fact_tokens = [engine.tokenize(f"\n{f.statement}\n", add_special=False) for f in facts]
        asked = rng.sample(facts, facts_per_window)
        tail = engine.tokenize(
            "\n\n" + "\n".join(f"Question: {f.question} Answer: {f.answer}" for f in asked), add_special=False
        )
        hay_len = length - head_len - sum(map(len, fact_tokens)) - len(tail)
        if hay_len < length // 2:
            raise ValueError(f"{len(facts)} facts leave too little haystack in {length} tokens")
        cuts = sorted(rng.randrange(int(0.05 * hay_len), int(0.9 * hay_len)) for _ in facts)
        seq, prev, spans = list(head), 0, []
        for cut, toks in zip(cuts, fact_tokens):
            seq += hay[prev:cut]
            spans.append((len(seq), len(seq) + len(toks)))
            seq += toks
            prev = cut
        seq += hay[prev:hay_len]
        windows.append(RetrievalWindow(seq + tail, facts, spans, len(seq), asked))
    return windows

"""Variable tracking (RULER's vt): chains of assignments "VAR QPWLX = 41234", "VAR HRTZA = VAR
QPWLX", ... hidden in repeated noise; the model names every variable that ends up holding the
first one's value. A short solved example precedes the task, as in RULER."""

from __future__ import annotations

import random
import string

from .niah import NOISE
from .prompt import fit_length, insert_at_depths, render_prompt

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {value} in the text above."
)
ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables "
    "are assigned the value {value}, they are: "
)
EXAMPLE_NOISE = 20  # noise sentences of the solved example


def _names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _chains(rng: random.Random, n_chains: int, n_hops: int, taken: set[str]):
    """(variable names, statements, value) of each chain."""
    chains = []
    for _ in range(n_chains):
        names = _names(rng, n_hops + 1, taken)
        value = str(rng.randint(10000, 99999))
        statements = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
        chains.append((names, statements, value))
    return chains


def _context(n_noise: int, chains, depths: list[list[float]]) -> str:
    statements = [s for _, stmts, _ in chains for s in stmts]
    flat_depths = [d for chain_depths in depths for d in chain_depths]
    noise = [NOISE[i % len(NOISE)] for i in range(n_noise)]
    return " ".join(insert_at_depths(noise, statements, flat_depths)).replace("again. ", "again.\n")


def _draw_depths(rng: random.Random, chains) -> list[list[float]]:
    # sorted within a chain, so each assignment comes after the one it copies
    return [sorted(rng.random() for _ in stmts) for _, stmts, _ in chains]


def generate(tokenizer, target: int, rng: random.Random, n_chains: int = 1, n_hops: int = 4) -> dict:
    taken: set[str] = set()
    chains = _chains(rng, n_chains, n_hops, taken)
    depths = _draw_depths(rng, chains)
    example_chains = _chains(rng, 1, n_hops, taken)
    example_names, _, example_value = example_chains[0]
    example = (
        TEMPLATE.format(
            context=_context(EXAMPLE_NOISE, example_chains, _draw_depths(rng, example_chains)),
            value=example_value,
        )
        + ANSWER_PREFIX.format(count=n_hops + 1, value=example_value)
        + " ".join(example_names)
    )
    names, _, value = chains[0]
    answer_prefix = ANSWER_PREFIX.format(count=n_hops + 1, value=value)

    def render(n: int) -> list[int]:
        task = TEMPLATE.format(context=_context(n, chains, depths), value=value)
        return render_prompt(tokenizer, example + "\n\n" + task, answer_prefix)

    n, ids = fit_length(render, target, 4 * target)
    return dict(input_ids=ids, answers=list(names), haystack_units=n)

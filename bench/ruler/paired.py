"""Paired comparisons of RULER rows: two configurations on the very same examples, counted as
wins and losses. With a handful of samples the averages' standard errors overlap; a paired count
says whether one configuration answers what the other misses or merely differs by noise."""

from __future__ import annotations

import re

from ..specs import uses_modules
from .summary import average, config_of, level_label, ordered_configs


def _level(config: tuple) -> tuple:
    """What makes two configurations comparable: the same eviction ratio or the same budget."""
    return config[1:]


def best_heuristic(scores: dict[tuple, dict], level: tuple, tasks: list[str]) -> tuple | None:
    """The configuration without IndexMem's modules (full KV aside) with the highest average at
    ``level``; None if there is none or none has every task."""
    candidates = [
        c for c in ordered_configs(scores) if c[0] != "full" and _level(c) == level and not uses_modules(c[0])
    ]
    ranked = [(avg, c) for c in candidates if (avg := average(scores[c], tasks)) is not None]
    return max(ranked, key=lambda x: x[0])[1] if ranked else None  # a tie goes to the first by name


def examples_by_config(rows: list[dict], context: int) -> dict[tuple, dict[tuple, float]]:
    """The scores of one context's rows by configuration (``config_of``) and example."""
    examples: dict[tuple, dict] = {}
    for r in rows:
        if r["context"] == context:
            examples.setdefault(config_of(r), {})[(r["task"], r["index"], r.get("depth"))] = r["score"]
    return examples


def wins_losses(examples: dict[tuple, dict], a: tuple, b: tuple) -> tuple[int, int, int]:
    """(examples where ``a`` scored higher, where lower, how many both measured)."""
    shared = examples[a].keys() & examples[b].keys()
    wins = sum(examples[a][k] > examples[b][k] for k in shared)
    losses = sum(examples[a][k] < examples[b][k] for k in shared)
    return wins, losses, len(shared)


def _cell(examples: dict[tuple, dict], a: tuple, b: tuple | None, named: bool = False) -> str:
    if a not in examples or b is None or b not in examples:
        return "–"
    wins, losses, n = wins_losses(examples, a, b)
    return f"{wins}–{losses} of {n}" + (f" ({b[0]})" if named else "")


def paired_table(rows: list[dict], context: int, scores: dict[tuple, dict], tasks: list[str]) -> list[str]:
    """Markdown lines: every configuration that runs IndexMem's modules against the best
    heuristic of its level and, where both ran, the memory's and the recall tier's effects
    (``indexmem`` against ``indexmem-nomem``, ``snapkv+mem`` against ``snapkv``, a ``+recall`` or
    ``+recallN`` configuration, with any ``-end``, ``-end-att`` or ``-step``, against the same without it). Empty when there is nothing to pair. ``scores``: this context's per-task scores by configuration
    (``summary.task_scores``)."""
    examples = examples_by_config(rows, context)
    levels = sorted({_level(c) for c in examples if uses_modules(c[0])}, key=lambda lv: (lv[0] is None, lv))
    best = {lv: best_heuristic(scores, lv, tasks) for lv in levels}
    lines = []
    for spec in dict.fromkeys(c[0] for c in ordered_configs(examples) if uses_modules(c[0])):
        cells = [_cell(examples, (spec, *lv), best[lv], named=True) for lv in levels]
        lines.append(f"| {spec} vs the best heuristic | " + " | ".join(cells) + " |")
    specs = {c[0] for c in examples}
    recall_pairs = [
        (spec, base, "the recall tier's effect" + (", with the memory" if base == "indexmem" else ""))
        for spec in sorted(specs)
        for base in [re.sub(r"\+recall\d*(-end|-step)?(-att)?$", "", spec)]
        if base != spec
    ]
    for a, b, what in (
        ("indexmem", "indexmem-nomem", "the memory's effect"),
        ("snapkv+mem", "snapkv", "the memory behind SnapKV"),
        *recall_pairs,
    ):
        if a in specs and b in specs:
            cells = [_cell(examples, (a, *lv), (b, *lv)) for lv in levels]
            lines.append(f"| {a} vs {b} ({what}) | " + " | ".join(cells) + " |")
    if not lines or not levels:
        return []
    return [
        "Paired on the same examples (wins–losses of the examples both measured; the best heuristic is "
        "the one with the highest avg at that level, the first by name on a tie):",
        "",
        "| comparison | " + " | ".join(level_label(lv) for lv in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ] + lines

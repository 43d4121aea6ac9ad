"""Markdown tables of RULER rows: scores (x100, as RULER reports them) per configuration and task,
single needles found per depth, and needle accuracy per depth and length."""

from __future__ import annotations

from .paired import paired_table
from .summary import (
    average,
    average_error,
    bin_label,
    cache_bytes,
    config_label,
    depth_accuracy,
    depth_grid,
    ordered_configs,
    task_scores,
)
from .tasks import TASKS
from .timing import time_table


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}"


def ruler_table(rows: list[dict]) -> str:
    """One table per context length: a row per configuration, a column per task and the average
    over tasks (only when the configuration has every task), then IndexMem's paired comparisons and
    the single needles found by depth."""
    scores = task_scores(rows)
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    kv = cache_bytes(rows)
    n = {k: min(v.n for v in s.values()) for k, s in scores.items()}
    out = []
    for context in sorted({c for _, c in scores}):
        out += [
            f"{context:,} tokens, score x100 (n = samples per task, cache MB = KV + index + memory allocated)",
            "",
            "| configuration | cache MB | n | " + " | ".join(TASKS[t].short for t in tasks) + " | avg |",
            "|---|---:|---:|" + "---:|" * (len(tasks) + 1),
        ]
        for config in ordered_configs(c for c, ctx in scores if ctx == context):
            s = scores[(config, context)]
            cells = [f"{100 * s[t].mean:.1f}" if t in s else "–" for t in tasks]
            out.append(
                f"| {config_label(config)} | {megabytes(kv[(config, context)])} | {n[(config, context)]} | "
                + " | ".join(cells)
                + f" | {_average_cell(s, tasks)} |"
            )
        out.append("")
        paired = paired_table(
            rows, context, {c: v for (c, ctx), v in scores.items() if ctx == context}, tasks
        )
        out += paired + [""] * bool(paired)
        by_depth = needles_by_depth([r for r in rows if r["context"] == context])
        out += by_depth + [""] * bool(by_depth)
    legend = ", ".join(f"{TASKS[t].short} = {t}" for t in tasks)
    return "\n".join(
        out
        + [
            legend,
            "",
            "avg = mean over the tasks (each weighs the same) ± its standard error "
            "over the samples (from 2 samples on).",
        ]
    )


def _average_cell(scores: dict, tasks: list[str]) -> str:
    avg, err = average(scores, tasks), average_error(scores, tasks)
    if avg is None:
        return "–"
    return f"**{100 * avg:.1f}**" + ("" if err is None else f" ± {100 * err:.1f}")


def needles_by_depth(rows: list[dict]) -> list[str]:
    """Markdown lines: per configuration, the niah_single needles found out of those placed in
    each depth bin of the prompt (one context's rows). A policy that keeps by recency finds the
    late needles only; the averages cannot show where in the prompt a policy loses them. Empty
    without niah_single rows."""
    bins, contexts, cells = depth_grid([r for r in rows if r["task"].startswith("niah_single")])
    if len(contexts) > 1:
        raise ValueError(f"needles_by_depth takes one context length's rows, got {contexts}")
    if not bins:
        return []
    out = [
        "The niah_single needles by their depth in the prompt (found / placed):",
        "",
        "| configuration | " + " | ".join(bin_label(b) for b in bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    for config in ordered_configs(cells):
        counts = [cells[config].get((b, contexts[0])) for b in bins]
        out.append(
            f"| {config_label(config)} | "
            + " | ".join("–" if c is None else f"{round(c[0], 2):g}/{c[1]}" for c in counts)
            + " |"
        )
    return out


def depth_table(rows: list[dict]) -> str:
    """Needle accuracy per configuration: a row per depth, a column per context length."""
    bins, contexts, cells = depth_grid(rows)
    out = []
    for config in ordered_configs(cells):
        out += [
            f"{config_label(config)}",
            "",
            "| depth | " + " | ".join(f"{c:,}" for c in contexts) + " |",
            "|---|" + "---:|" * len(contexts),
        ]
        for b in bins:
            vals = [cells[config].get((b, c)) for c in contexts]
            out.append(
                f"| {bin_label(b)} | "
                + " | ".join("–" if v is None else f"{depth_accuracy(v):.2f}" for v in vals)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def ruler_report(rows: list[dict], model: str) -> str:
    """The markdown file ``indexmem-bench ruler`` writes beside its rows: the scores, then what
    each sample cost."""
    return f"RULER, {model}\n\n" + "\n\n".join(filter(None, [ruler_table(rows), time_table(rows)])) + "\n"


def niah_report(rows: list[dict], task: str, model: str) -> str:
    """The markdown file ``indexmem-bench niah`` writes beside its rows."""
    return f"{task} accuracy by depth and length, {model}\n\n{depth_table(rows)}\n"

"""Markdown tables from benchmark result files (RULER and needle JSONL, perplexity and speed JSON).

python -m indexmem.bench.report docs/results/needle-smollm2-4k.jsonl docs/results/ppl-smollm2-4k.json

Every file, all its rows; ``python -m indexmem.bench.docs`` writes the documentation's tables from
the rows of the shipped files.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .needle import summarize
from .ruler.summary import read_rows
from .ruler.table import depth_table, ruler_table
from .speed_results import read_speed, speed_table

app = typer.Typer(add_completion=False, help=__doc__)


def needle_table(rows: list[dict]) -> str:
    summary = summarize(rows)
    full = summary[("full", 0.0)]["score"]
    ratios = sorted({r for (_, r) in summary if r > 0})
    specs = sorted(
        {s for (s, r) in summary if r > 0},
        key=lambda s: (-sum(summary.get((s, r), {}).get("score", 0) for r in ratios), s),
    )
    lines = [
        "| configuration | " + " | ".join(f"evict {r:g}" for r in ratios) + " |",
        "|---|" + "---:|" * len(ratios),
        "| full KV | " + " | ".join(f"{full:.2f}" for _ in ratios) + " |",
    ]
    for s in specs:
        cells = []
        for r in ratios:
            v = summary.get((s, r))
            cells.append(
                "–" if v is None else f"{v['score']:.2f} ({v['score'] / full:.0%} of full, n={v['n']})"
            )
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ppl_table(data: dict) -> str:
    results = data["results"]
    full = next(r["ppl"] for r in results if r["policy"] == "full")
    ratios = sorted({r["evict_ratio"] for r in results if r["policy"] != "full"})
    specs = list(dict.fromkeys(r["policy"] for r in results if r["policy"] != "full"))
    by = {(r["policy"], r["evict_ratio"]): r for r in results}
    lines = [
        "| configuration | "
        + " | ".join(f"evict {r:g} (B={by[(specs[0], r)]['budget']})" for r in ratios)
        + " |",
        "|---|" + "---:|" * len(ratios),
        "| full KV | " + " | ".join(f"{full:.3f}" for _ in ratios) + " |",
    ]
    for s in sorted(specs, key=lambda s: (sum(by[(s, r)]["ppl"] for r in ratios if (s, r) in by), s)):
        lines.append(
            f"| {s} | "
            + " | ".join(
                f"{by[(s, r)]['ppl']:.3f} ({by[(s, r)]['ppl'] / full:.3f}x)" if (s, r) in by else "–"
                for r in ratios
            )
            + " |"
        )
    return "\n".join(lines)


def jsonl_table(path: Path) -> str:
    """RULER rows (they name a task) or needle rows."""
    rows = read_rows(path)
    if rows and "task" in rows[0]:
        if all(r["depth"] is not None for r in rows):
            return depth_table(rows)
        return ruler_table(rows)
    return needle_table(rows)


def json_table(path: Path) -> str:
    """Speed results (they have rows) or perplexity results."""
    data = json.loads(path.read_text())
    return speed_table(read_speed(path)) if "rows" in data else ppl_table(data)


@app.command()
def main(files: list[Path]):
    for path in files:
        typer.echo(f"\n{path.name}\n")
        typer.echo(jsonl_table(path) if path.suffix == ".jsonl" else json_table(path))


if __name__ == "__main__":
    app()

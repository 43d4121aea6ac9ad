"""Choosing the recall tier's limit per compression (``per_step``) on held-out text, never on
evaluation data.

The held-out split of the training corpus (``data.prepare``: Milton and one Debian document in
16) gets retrieval-shaped windows (``retrieval.py``, the broad wordings): facts at random depths,
the questions at the end. The bounded model reads each window as the engine serves a prompt
(chunked prefill, compressions, recall) up to the first answer, then is teacher-forced through
the tail one token at a time, as decoding feeds it; what is measured is the negative
log-likelihood of the answers' tokens. Greedy exact answers are too rare on these windows for a
small model to tell settings apart; the likelihood of the right answer is not.

Every setting reads the same windows; the table is paired per answer against the indexer alone.

    python -m indexmem.train.recall_select --corpus data/corpus --out recall-select.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..engine.api import Engine
from ..engine.eviction import budget_from_ratio
from ..jsonl import append_row, read_rows
from .validate import answered_windows

BASELINES = ("full", "nomem")


def settings(per_steps: list[int], ends: list[str]) -> list[str]:
    """recall-R: at every compression; recall-R-end: only at a prompt's end and in decoding;
    recall-R-end-att: ranked there by the model's attention; recall-R-step: swapped in at each
    step by its own attention."""
    return [*BASELINES, *(f"recall-{r}{e}" for e in ends for r in per_steps)]


def engine_for(setting: str, model: str, sidecar, length: int, ratio: float, threads: int) -> Engine:
    opts = dict(policy="full", indexmem=False)
    if setting != "full":
        opts = dict(
            policy="indexmem",
            indexmem=sidecar,
            memory=False,
            budget=budget_from_ratio(length, ratio),
            window=64,
        )
        if setting.startswith("recall-"):
            at = "prompt_end" if "-end" in setting else "every_chunk"
            score = "attention" if setting.endswith("-att") else "index"
            if setting.endswith("-step"):
                at, score = "each_step", "attention"
            opts.update(
                recall="disk", recall_per_step=int(setting.split("-")[1]), recall_at=at, recall_score=score
            )
    return Engine.load(model, n_threads=threads, n_ctx=length + 8, n_batch=512, **opts)


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    z = logits.astype(np.float64)
    z -= z.max()
    return float(z[token] - np.log(np.exp(z).sum()))


def answer_nll(engine: Engine, tokens: list[int], spans: list[tuple[int, int]]) -> list[float]:
    """NLL (nats) of each answer span's tokens, the prompt fed up to the first answer as a prompt
    is, the rest one token per step."""
    engine.reset()
    start = spans[0][0]
    logits = engine.feeder.feed(tokens[:start])[-1]
    per_answer = [0.0] * len(spans)
    for t in range(start, spans[-1][1]):
        for i, (a, b) in enumerate(spans):
            if a <= t < b:
                per_answer[i] -= log_softmax_at(logits, tokens[t])
        if t + 1 < spans[-1][1]:
            logits = engine.feeder.feed(np.array([tokens[t]], dtype=np.int32))[-1]
    return per_answer


def run(args) -> list[dict]:
    console = Console()
    text = (Path(args.corpus) / "heldout.txt").read_text()
    todo = [s for s in settings(args.per_step, args.at) if not args.only or s in args.only]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("windows", total=len(todo) * args.windows)
        for setting in todo:
            engine = engine_for(setting, args.model, args.indexmem, args.length, args.ratio, args.threads)
            try:
                cases = answered_windows(engine, text, args.length, args.windows, args.seed)
                for i, (window, spans) in enumerate(cases):
                    progress.update(bar, description=f"{setting} window {i + 1}")
                    done = {
                        (r["setting"], r["window"]) for r in read_rows(args.out)
                    }  # rows other processes wrote too
                    if (setting, i) not in done:
                        nll = answer_nll(engine, window.tokens, spans)
                        row = dict(setting=setting, window=i, ratio=args.ratio, length=args.length, nll=nll)
                        append_row(args.out, row)
                    progress.advance(bar)
            finally:
                engine.close()
    return read_rows(args.out)


def table(rows: list[dict], baseline: str = "nomem", seed: int = 0) -> list[str]:
    """Mean answer NLL per setting, and against ``baseline`` on the answers both measured: mean
    difference, a bootstrap 95% interval, and how many answers got likelier / less likely."""
    by = {}
    for r in rows:
        by.setdefault(r["setting"], {})[r["window"]] = r["nll"]
    base = by.get(baseline, {})
    rng = np.random.default_rng(seed)
    lines = [
        "| setting | windows | answers | mean NLL | vs nomem | 95% CI | likelier / less |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, per in by.items():
        own = np.concatenate([per[w] for w in sorted(per)])
        shared = sorted(set(per) & set(base))
        diff = np.concatenate([np.subtract(per[w], base[w]) for w in shared]) if shared else np.zeros(0)
        if len(diff):
            boot = rng.choice(diff, (2000, len(diff))).mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            paired = f"{diff.mean():+.3f} | {lo:+.3f}..{hi:+.3f} | {(diff < 0).sum()} / {(diff > 0).sum()}"
        else:
            paired = "| |"
        lines.append(f"| {name} | {len(per)} | {len(own)} | {own.mean():.3f} | {paired} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--indexmem", default=None, help="sidecar (default: the registry model's)")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--out", type=Path, required=True, help="rows (JSON lines; a run resumes from them)")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--per-step", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    p.add_argument(
        "--at",
        type=lambda s: [
            {"every_chunk": "", "prompt_end": "-end", "attention": "-end-att", "each_step": "-step"}[x]
            for x in s.split(",")
        ],
        default=[""],
        help="every_chunk, prompt_end, attention (at the prompt's end, ranked by attention), each_step "
        "(swapped in at each step by its attention), comma separated",
    )
    p.add_argument("--only", nargs="*", help="settings to run in this process (names), for two processes")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    rows = run(args)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()

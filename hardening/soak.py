"""Soak: stream a long conversation through one chat session and watch the process's memory.

    python -m indexmem.hardening.soak --tokens 100000 --out docs/results/soak.json --plot docs/results/soak.png

Turn after turn, a user message of ``--turn-tokens`` tokens of real text (CPython sources and
the licence texts, neither training nor evaluation data) and a reply of up to
``--reply-tokens`` go through one :class:`Conversation` on the default model with its default
bounded cache (so evictions and context shifts happen throughout); every ``--save-every`` turns
the session is saved. The resident set size is sampled after every turn; after the warm-up
share of the tokens it must stay within ``--tolerance`` of its median (exit status 1 if not).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..atomic import write_atomic
from ..bench.heldout import heldout_text, python_source_text
from ..engine.api import Engine
from ..engine.registry import DEFAULT_MODEL
from ..plotting import pyplot, save_png

app = typer.Typer(add_completion=False, help=__doc__)


WARMUP = 0.1  # share of the tokens before memory must be flat


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flatness(rss: list[int]) -> float:
    """Largest deviation from the median, relative to it."""
    ordered = sorted(rss)
    median = ordered[len(ordered) // 2]
    return max(abs(ordered[0] - median), abs(ordered[-1] - median)) / median


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    tokens: int = typer.Option(100_000, help="conversation tokens to stream"),
    turn_tokens: int = typer.Option(400, help="tokens per user message"),
    reply_tokens: int = typer.Option(32, help="tokens per reply at most"),
    save_every: int = typer.Option(25, help="save the session every this many turns"),
    warmup: float = typer.Option(WARMUP, help="share of the tokens before memory must be flat"),
    tolerance: float = typer.Option(0.05, help="allowed deviation of RSS from its median after warm-up"),
    threads: int = typer.Option(1),
    out: Path = typer.Option(None, help="JSON: the samples and the figures"),
    plot: Path = typer.Option(None, help="PNG: RSS over conversation tokens"),
):
    console = Console()
    engine = Engine.load(model, n_threads=threads)
    text = engine.tokenize(python_source_text() + "\n\n" + heldout_text(), add_special=False)
    conversation = engine.conversation(system="You are a helpful assistant.")
    samples, turn, start = [], 0, time.perf_counter()
    session = Path(tempfile.mkdtemp()) / "soak.session"
    with Progress(
        TextColumn("soak"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tokens"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("soak", total=tokens)
        seen = 0
        while seen < tokens:
            at = (turn * turn_tokens) % max(1, len(text) - turn_tokens)
            message = "Summarize this:\n" + engine.detokenize(text[at : at + turn_tokens])
            conversation.say(message, max_tokens=reply_tokens)
            turn += 1
            if turn % save_every == 0:
                engine.save_session(session)
            st = engine.stats()
            seen = st["conversation_tokens"]
            samples.append(
                {
                    "tokens": seen,
                    "rss": rss_bytes(),
                    "seconds": time.perf_counter() - start,
                    "cached_max": max(st["tokens_cached"]),
                    "position_shift": st["position_shift"],
                }
            )
            bar.update(task, completed=min(seen, tokens))
    session.unlink(missing_ok=True)
    session.parent.rmdir()
    after = [s["rss"] for s in samples if s["tokens"] >= warmup * tokens]
    flat = flatness(after)
    st = engine.stats()
    summary = {
        "model": str(engine.model_path.name),
        "policy": st["policy"],
        "budget": st["budget"],
        "tokens": samples[-1]["tokens"],
        "turns": turn,
        "seconds": round(samples[-1]["seconds"], 1),
        "rss_after_warmup_min": min(after),
        "rss_after_warmup_max": max(after),
        "flatness": flat,
        "tolerance": tolerance,
        "warmup_tokens": warmup * tokens,
        "kv_bytes": st["kv_bytes"],
        "position_shift": st["position_shift"],
        "samples": samples,
    }
    console.print(
        f"{summary['tokens']} tokens in {turn} turns, {summary['seconds']} s; RSS after warm-up "
        f"{min(after) / 2**20:.1f}–{max(after) / 2**20:.1f} MiB, largest deviation from the median "
        f"{100 * flat:.2f}% (tolerance {100 * tolerance:.0f}%)"
    )
    if out:
        write_atomic(out, json.dumps(summary, indent=1).encode())
    if plot:
        plot_rss(summary, plot)
    raise typer.Exit(0 if flat <= tolerance else 1)


def warmup_tokens(summary: dict) -> float:
    """Where the warm-up ended; a summary written before it was recorded ran with the default
    share, of a requested length it streamed a little past."""
    return summary.get("warmup_tokens", WARMUP * summary["tokens"])


def plot_rss(summary: dict, path: Path) -> None:
    plt = pyplot()
    xs = [s["tokens"] for s in summary["samples"]]
    ys = [s["rss"] / 2**20 for s in summary["samples"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(xs, ys, lw=1)
    ax.axvline(warmup_tokens(summary), color="grey", ls="--", lw=1, label="end of warm-up")
    ax.set_xlabel("conversation tokens")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, max(ys) * 1.15)
    ax.set_title(
        f"{summary['model']}, {summary['policy']} budget {summary['budget']}: RSS after warm-up within "
        f"{100 * summary['flatness']:.2f}% of its median",
        fontsize=9,
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path, 120)


if __name__ == "__main__":
    app()

"""Prefill and decode speed of the engine beside llama.cpp, same GGUF, same threads, one run.

    python -m indexmem.bench.speed --model smollm2-135m-instruct --contexts 128,2048,8192
    python -m indexmem.bench.speed --contexts 1024,8000 --policies full,streaming,indexmem --budget 1024

Evicting configurations run with a bounded cache (``--budget``) while llama.cpp keeps its full
KV cache (what you would run without indexmem). IndexMem's bookkeeping (scoring, eviction,
memory) is what a bounded decode step costs beyond a full-KV step over a cache of the budget's
size: compare ``indexmem`` at 8000 with ``full`` at 1024.

For each context the two engines run alternately (ours, llama.cpp, ours, ...) and the best of
``--reps`` runs is kept, so machine noise hits both alike. Prefill: tokens/s for a prompt of
that length from an empty cache (logits of the last position only). Decode: tokens/s of greedy
generation right after that prefill.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..atomic import write_atomic
from ..engine.api import Engine
from ..engine.registry import DEFAULT_MODEL, resolve
from .heldout import python_source_text
from .llama_cpp_ref import open_llama_cpp
from .specs import engine_options, parse_specs

app = typer.Typer(add_completion=False, help=__doc__)


def benchmark_tokens(engine: Engine, n: int) -> list[int]:
    """``n`` tokens of real offline text (CPython's standard-library sources), never eval data."""
    tokens = engine.tokenize(python_source_text())
    while len(tokens) < n:
        tokens = tokens + tokens[1:]
    return tokens[:n]


def run_ours(engine: Engine, prompt: list[int], n_decode: int) -> tuple[float, float]:
    engine.reset()
    it = engine.generate_tokens(prompt, max_tokens=n_decode, stop_at_eog=False)
    t0 = time.perf_counter()
    next(it)  # prefill + first sample
    t1 = time.perf_counter()
    n = 1 + sum(1 for _ in it)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n - 1) / (t2 - t1)


def _llama_cpp_greedy(llm) -> int:
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))


def run_llama_cpp(llm, prompt: list[int], n_decode: int) -> tuple[float, float]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    token = _llama_cpp_greedy(llm)
    t1 = time.perf_counter()
    for _ in range(n_decode - 1):
        llm.eval([token])
        token = _llama_cpp_greedy(llm)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_decode - 1) / (t2 - t1)


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    contexts: str = typer.Option("128,2048,8192", help="prompt lengths, comma separated"),
    decode_tokens: int = typer.Option(64, help="tokens generated after each prefill"),
    threads: int = typer.Option(1, help="threads for both engines"),
    n_batch: int = typer.Option(512, help="prefill chunk for both engines"),
    reps: int = typer.Option(2, help="alternating repetitions; the best is kept"),
    policies: str = typer.Option(
        "full",
        "--policies",
        "--policy",
        help="our engine's configurations (full, indexmem, indexmem-nomem, streaming, ..., see bench.specs)",
    ),
    budget: int = typer.Option(1024, help="KV budget per layer of the evicting configurations"),
    tau: int = typer.Option(16, help="compression period of the evicting configurations"),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar (default: merged or shipped)"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
):
    console = Console()
    path = resolve(model, console.print)
    ctx_list = [int(c) for c in contexts.split(",")]
    specs = parse_specs(policies)
    n_ctx = max(ctx_list) + decode_tokens
    engines = {}
    for spec in specs:
        opts = engine_options(spec, budget, str(indexmem) if indexmem else None)
        if spec != "full":
            opts["tau"] = tau
        engines[spec] = Engine.load(model, n_threads=threads, n_ctx=n_ctx, n_batch=n_batch, **opts)
        engines[spec].runner.evictor and _time_after_step(engines[spec])
    llm = open_llama_cpp(
        path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(ctx_list) * reps * (len(specs) + 1))
        for ctx in ctx_list:
            prompt = benchmark_tokens(next(iter(engines.values())), ctx)
            runs = {name: [] for name in [*specs, "llama.cpp"]}
            for _ in range(reps):
                for spec, engine in engines.items():
                    engine.after_step_seconds = 0.0
                    prefill, decode = run_ours(engine, prompt, decode_tokens)
                    runs[spec].append((prefill, decode, engine.after_step_seconds))
                    progress.advance(task)
                runs["llama.cpp"].append((*run_llama_cpp(llm, prompt, decode_tokens), 0.0))
                progress.advance(task)
            for name, rs in runs.items():
                best = max(rs, key=lambda r: r[1])
                rows.append(
                    dict(
                        context=ctx,
                        engine=name,
                        prefill=max(r[0] for r in rs),
                        decode=best[1],
                        policy_seconds=best[2],
                    )
                )
    for engine in engines.values():
        engine.close()
    _print(console, rows, path.name, threads, n_batch, decode_tokens, reps, budget, tau)
    if out:
        write_atomic(
            out,
            json.dumps(
                dict(
                    model=str(path),
                    threads=threads,
                    n_batch=n_batch,
                    budget=budget,
                    tau=tau,
                    decode_tokens=decode_tokens,
                    rows=rows,
                ),
                indent=2,
            ).encode(),
        )


def _time_after_step(engine: Engine) -> None:
    """Accumulate the time the evictor's Python side (scores, top-B, compaction plan) takes."""
    evictor = engine.runner.evictor
    inner = evictor.after_step

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        inner(*args, **kwargs)
        engine.after_step_seconds += time.perf_counter() - t0

    engine.after_step_seconds = 0.0
    evictor.after_step = timed


def _print(console, rows, name, threads, n_batch, decode_tokens, reps, budget, tau):
    table = Table(
        title=f"{name}, {threads} thread(s), n_batch {n_batch}, {decode_tokens} decode tokens, "
        f"best of {reps}; evicting configurations: B={budget}, tau={tau}; llama.cpp: full KV"
    )
    for col in ("context", "engine", "prefill tok/s", "vs llama.cpp", "decode tok/s", "vs llama.cpp"):
        table.add_column(col, justify="right")
    ref = {r["context"]: r for r in rows if r["engine"] == "llama.cpp"}
    for r in rows:
        base = ref[r["context"]]
        table.add_row(
            str(r["context"]),
            r["engine"],
            f"{r['prefill']:.1f}",
            f"{r['prefill'] / base['prefill']:.2f}x",
            f"{r['decode']:.1f}",
            f"{r['decode'] / base['decode']:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    app()

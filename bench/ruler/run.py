"""Run RULER tasks under cache configurations into a resumable JSONL file, one row per example.

Each configuration is measured as the needle benchmark does: the engine is loaded with room for
the prompt and the answer, the prompt is prefilled in chunks of ``n_batch`` tokens with the cache
compressed to its budget after every chunk (physical eviction: the cache holds the budget and
no more), and the answer is decoded greedily. Rows already in the file are not run again."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ...engine.api import Engine
from ...engine.eviction import budget_from_ratio
from ...engine.registry import resolve, sha256_of
from ...jsonl import append_row
from ..specs import engine_options, modules_sha256, recall_settings
from .data import DISTRIBUTION as PACKAGE_NAME
from .data import RulerData
from .summary import data_parts, measured_under, measured_with, read_rows, row_key, run_settings
from .tasks import TASKS, generate_sample


@dataclass(frozen=True)
class CacheConfig:
    """A configuration name (``bench.specs``) at an eviction ratio or a fixed budget."""

    spec: str
    evict_ratio: float | None = None
    budget: int | None = None

    def budget_for(self, context: int) -> int | None:
        if self.spec == "full":
            return None
        return self.budget if self.budget is not None else budget_from_ratio(context, self.evict_ratio)


def cache_configs(specs: list[str], ratios: list[float] = (), budgets: list[int] = ()) -> list[CacheConfig]:
    """Full KV first (always measured, once), then every other configuration at every ratio and
    every budget."""
    configs = [CacheConfig("full", 0.0)]
    for spec in dict.fromkeys(s for s in specs if s != "full"):
        configs += [CacheConfig(spec, evict_ratio=float(r)) for r in ratios]
        configs += [CacheConfig(spec, budget=int(b)) for b in budgets]
    return configs


@dataclass(frozen=True)
class Case:
    task: str
    context: int
    index: int
    depth: float | None = None  # the needle's depth, for depth sweeps of single-needle tasks


# Sample-major: the cases a larger --samples adds form one block, which --shard then splits evenly.
def ruler_cases(tasks: list[str], lengths: list[int], samples: int) -> list[Case]:
    return [Case(t, n, i) for i in range(samples) for n in lengths for t in tasks]


def depth_cases(task: str, lengths: list[int], depths: list[float], samples: int) -> list[Case]:
    return [Case(task, n, i, d) for i in range(samples) for n in lengths for d in depths]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``K/N``: this process runs the K-th of N interleaved slices of the cases."""
    if not text:
        return 1, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, like 1/2, not {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard_cases(cases: list[Case], shard: tuple[int, int]) -> list[Case]:
    """Every N-th case from the K-th: N processes given the same cases and --out split every
    configuration evenly and append to one file."""
    k, n = shard
    return cases[k - 1 :: n]


@dataclass
class Bench:
    """What stays the same across a sweep."""

    model: str
    data: RulerData
    seed: int = 0
    threads: int = 1
    n_batch: int | None = 512  # None: the whole prompt in one chunk, compressed once before decoding
    window: int = 64  # recent tokens every evicting configuration keeps
    indexmem: str | None = None
    cache_types: tuple[str, str] = ("f16", "f16")  # K and V cache element types


def run(
    bench: Bench,
    configs: list[CacheConfig],
    cases: list[Case],
    out: Path | None,
    console: Console | None = None,
) -> list[dict]:
    """Run every case under every configuration; returns the rows of this model in ``out`` (old
    and new, including what other processes appended meanwhile) or, without ``out``, the new ones."""
    console = console or Console()
    for name in dict.fromkeys(c.task for c in cases):  # a missing data file fails before any model loads
        for part in TASKS[name].needs:
            getattr(bench.data, part)
    path = resolve(bench.model, console.print)
    sha = sha256_of(path)
    modules = modules_sha256(bench.model, path, sha, bench.indexmem)

    def stored() -> tuple[list[dict], list[dict]]:
        """This model's rows in ``out`` (with the current modules), and those of them with this run's settings."""
        mine = measured_with(read_rows(out), sha, modules)
        return mine, measured_under(
            mine, bench.seed, bench.n_batch, bench.window, bench.data, bench.cache_types
        )

    def identity(config: CacheConfig, case: Case) -> dict:
        """The fields of a row that ``row_key`` reads."""
        return dict(
            model_sha256=sha,
            indexmem_sha256=modules.for_config(config.spec) if modules else None,
            config=config.spec,
            evict_ratio=config.evict_ratio,
            budget=config.budget_for(case.context),
            context=case.context,
            task=case.task,
            index=case.index,
            depth=case.depth,
            data=bench.data.source(data_parts(case.task)),
            **run_settings(config.spec, bench.seed, bench.n_batch, bench.window, bench.cache_types),
            **recall_settings(config.spec),
        )

    mine, rows = stored() if out else ([], [])
    if other := len(mine) - len(rows):
        console.print(
            f"{out}: leaving out {other} row{'s' * (other != 1)} measured with another --seed, "
            f"--n-batch, --window, --cache-type-k/-v or --data (this run: --seed {bench.seed} --n-batch "
            f"{bench.n_batch or 0} --window {bench.window} -ctk {bench.cache_types[0]} -ctv "
            f"{bench.cache_types[1]}, data {bench.data.directory or PACKAGE_NAME})"
        )
    done = {row_key(r) for r in rows}

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("RULER", total=len(configs) * len(cases))
        # Sample-major: every configuration finishes a sample before the next one starts, so a run
        # stopped at any point leaves whole samples (the tables use only those). An engine load
        # per configuration and sample costs 1-2 s against minutes of prefill.
        contexts = dict.fromkeys(c.context for c in cases)
        for index in dict.fromkeys(c.index for c in cases):
            samples: dict[Case, dict] = {}  # prompts are built once and shared by every configuration
            groups = {n: [c for c in cases if c.index == index and c.context == n] for n in contexts}
            for config, context in itertools.product(configs, contexts):
                todo = [c for c in groups[context] if row_key(identity(config, c)) not in done]
                progress.advance(bar, len(groups[context]) - len(todo))
                if not todo:
                    continue
                engine = _load(bench, config, context, max(TASKS[c.task].max_new_tokens for c in todo))
                try:
                    for case in todo:
                        progress.update(
                            bar,
                            description=f"{config.spec} {config.evict_ratio or config.budget or ''} "
                            f"{context} {case.task}",
                        )
                        sample = samples.get(case)
                        if sample is None:
                            depths = None if case.depth is None else [case.depth]
                            sample = samples[case] = generate_sample(
                                case.task, engine, context, bench.seed, case.index, bench.data, depths
                            )
                        row = dict(
                            model=bench.model,
                            **identity(config, case),
                            model_fingerprint=engine.model_fingerprint,
                            **measure(engine, sample),
                        )
                        rows.append(row)
                        if out:
                            append_row(out, row)
                        progress.advance(bar)
                finally:
                    engine.close()
    return stored()[1] if out else rows


def _load(bench: Bench, config: CacheConfig, context: int, max_new_tokens: int) -> Engine:
    n_ctx = context + max_new_tokens + 8
    opts = engine_options(config.spec, config.budget_for(context), bench.indexmem, bench.window)
    return Engine.load(
        bench.model,
        n_threads=bench.threads,
        n_ctx=n_ctx,
        n_batch=bench.n_batch or n_ctx,
        cache_type_k=bench.cache_types[0],
        cache_type_v=bench.cache_types[1],
        **opts,
    )


def measure(engine: Engine, sample: dict) -> dict:
    """Prefill the sample's prompt from an empty cache, decode the answer greedily, score it."""
    task = TASKS[sample["task"]]
    engine.reset()
    t0 = time.perf_counter()
    answer = engine.generate(sample["input_ids"], max_tokens=task.max_new_tokens)
    seconds = time.perf_counter() - t0
    st = engine.stats()
    return dict(
        prompt_tokens=sample["length"],
        needle_depths=sample["depths"],
        answers=sample["answers"],
        answer=answer,
        score=task.metric(answer, sample["answers"]),
        policy=st["policy"],
        policy_params=st["policy_params"],
        memory=st["memory"],
        kv_bytes=st["kv_bytes"],
        index_bytes=st["index_bytes"],
        memory_bytes=st["memory_bytes"],
        prefill_tok_s=_round(st.get("prompt_tok_s")),
        decode_tok_s=_round(st.get("decode_tok_s")),
        seconds=round(seconds, 2),
    )


def _round(x):
    return None if x is None else round(x, 1)

"""Reading result rows back and averaging them: per configuration and task, per depth and length."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ...jsonl import read_rows  # noqa: F401  (re-exported: the RULER modules read rows from here)
from ..specs import measured_with_files, recall_settings
from .data import PACKAGE
from .tasks import TASKS


def row_key(row: dict) -> tuple:
    """What identifies a measurement: the same example under the same configuration, model, modules
    and run settings."""
    return (
        row["model_sha256"],
        row.get("indexmem_sha256"),
        row["config"],
        row["evict_ratio"],
        row["budget"],
        row["context"],
        row["task"],
        row["index"],
        row["seed"],
        row["depth"],
        row["n_batch"],
        row.get("window"),
        *cache_types_of(row),
        data_of(row),
        tuple(sorted((row.get("recall") or {}).items())),
    )


def data_parts(task: str) -> tuple[str, ...]:
    """The ``RulerData`` parts a task reads (none for a task this version does not know)."""
    return TASKS[task].needs if task in TASKS else ()


def data_of(row: dict) -> str | None:
    """The data a row was measured on (``RulerData.source``); rows written before rows recorded it
    were all measured on the package's files."""
    if "data" in row:
        return row["data"]
    return PACKAGE if data_parts(row["task"]) else None


def cache_types_of(row: dict) -> tuple[str, str]:
    """The K and V cache types a row was measured with (rows written before rows recorded them
    were all f16)."""
    return row.get("cache_type_k", "f16"), row.get("cache_type_v", "f16")


def run_settings(
    config: str, seed: int, n_batch: int | None, window: int, cache_types: tuple[str, str] = ("f16", "f16")
) -> dict:
    """The settings of a run that change what a row measures besides its configuration and example
    (full KV keeps every token, so no recent window applies to it)."""
    return dict(
        seed=seed,
        n_batch=n_batch,
        window=None if config == "full" else window,
        cache_type_k=cache_types[0],
        cache_type_v=cache_types[1],
    )


def measured_under(
    rows: list[dict], seed: int, n_batch: int | None, window: int, data, cache_types=("f16", "f16")
) -> list[dict]:
    """The rows measured with these run settings and this ``RulerData``: a file may also hold rows
    of another seed, prefill chunk, recent window, K/V cache types or data, which neither resume
    nor average with these."""

    def recorded(r: dict) -> dict:
        return {**r, **dict(zip(("cache_type_k", "cache_type_v"), cache_types_of(r)))}

    return [
        r
        for r in rows
        if all(
            recorded(r).get(k) == v
            for k, v in {
                **run_settings(r["config"], seed, n_batch, window, cache_types),
                **recall_settings(r["config"]),
            }.items()
        )
        and data_of(r) == data.source(data_parts(r["task"]))
    ]


def measured_with(rows: list[dict], model_sha256: str, modules_sha256) -> list[dict]:
    """The rows of one model measured with these IndexMem modules (or none: heuristics), once
    each: processes that overlapped without --shard may both have measured an example."""
    seen, unique = set(), []
    for r in rows:
        if measured_with_files(r, model_sha256, modules_sha256):
            if row_key(r) not in seen:
                seen.add(row_key(r))
                unique.append(r)
    return unique


def complete_samples(rows: list[dict]) -> int:
    """How many leading samples (indices 0, 1, ...) every configuration has measured for every task
    and length in ``rows`` (a task and length some configuration has and another has not, the
    other has none of): a table of those compares all configurations on the same examples while
    the next sample is still being measured."""
    indices: dict = defaultdict(set)
    for r in rows:
        indices[config_of(r), (r["context"], r["task"])].add(r["index"])
    configs, cells = {c for c, _ in indices}, {cell for _, cell in indices}
    counts = []
    for key in ((c, cell) for c in configs for cell in cells):
        seen, n = indices.get(key, set()), 0
        while n in seen:
            n += 1
        counts.append(n)
    return min(counts, default=0)


def first_samples(rows: list[dict], n: int) -> list[dict]:
    """The rows of samples 0 .. n - 1."""
    return [r for r in rows if r["index"] < n]


def config_of(row: dict) -> tuple[str, float | None, int | None]:
    """(configuration, eviction ratio, fixed budget): a configuration at a ratio has a budget per
    context, so only a configuration given by budget keeps it in its identity."""
    if row["config"] == "full":
        return ("full", 0.0, None)
    return (row["config"], row["evict_ratio"], None if row["evict_ratio"] is not None else row["budget"])


def cache_bytes(rows: list[dict]) -> dict[tuple, int]:
    """(config, context) -> the cache a row of it allocated: KV + index keys + latent memory."""
    return {(config_of(r), r["context"]): r["kv_bytes"] + r["index_bytes"] + r["memory_bytes"] for r in rows}


def level_label(level: tuple) -> str:
    """How a (ratio, budget) level is written: "@ 0.9" or "B=1024"."""
    ratio, budget = level
    return f"@ {ratio:g}" if ratio is not None else f"B={budget}"


def config_label(config: tuple) -> str:
    spec, ratio, budget = config
    return "full KV" if spec == "full" else f"{spec} {level_label((ratio, budget))}"


def evict_share(row: dict) -> float:
    """The row's eviction ratio; for a fixed budget, the share of the prompt it evicts."""
    if row["config"] == "full":
        return 0.0
    if row["evict_ratio"] is not None:
        return row["evict_ratio"]
    return max(0.0, 1.0 - row["budget"] / row["prompt_tokens"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class TaskScore:
    mean: float
    n: int
    sem: float | None  # standard error of the mean; None from a single sample


def task_score(values: list[float]) -> TaskScore:
    m, n = _mean(values), len(values)
    sem = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return TaskScore(m, n, sem)


def task_scores(rows: list[dict]) -> dict[tuple, dict[str, TaskScore]]:
    """(config, context) -> task -> its score over the samples."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(config_of(r), r["context"])][r["task"]].append(r["score"])
    return {k: {t: task_score(v) for t, v in tasks.items()} for k, tasks in groups.items()}


def average(scores: dict[str, TaskScore], tasks: list[str]) -> float | None:
    """Mean over ``tasks`` (each task weighs the same), None unless every one was measured."""
    if not all(t in scores for t in tasks):
        return None
    return _mean([scores[t].mean for t in tasks])


def average_error(scores: dict[str, TaskScore], tasks: list[str]) -> float | None:
    """Standard error of ``average``: the tasks' samples are drawn independently, so their
    errors add in quadrature. None unless every task has two samples or more."""
    if not all(t in scores and scores[t].sem is not None for t in tasks):
        return None
    return math.sqrt(sum(scores[t].sem ** 2 for t in tasks)) / len(tasks)


def depth_of(row: dict) -> float | None:
    """The depth a needle row was placed at (asked for, or drawn when it had a single needle)."""
    if row.get("depth") is not None:
        return row["depth"]
    depths = row.get("needle_depths") or []
    return depths[0] if len(depths) == 1 else None


def depth_bins(depths: list[float], max_bins: int = 5) -> list[tuple[float, float]]:
    """The distinct depths as their own bins when few, else ``max_bins`` equal bins of [0, 1]."""
    distinct = sorted(set(depths))
    if len(distinct) <= 2 * max_bins:
        return [(d, d) for d in distinct]
    return [(i / max_bins, (i + 1) / max_bins) for i in range(max_bins)]


def bin_label(depth_bin: tuple[float, float]) -> str:
    """A depth bin as a table or axis shows it: the depth itself, or its range."""
    lo, hi = depth_bin
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def _in_bin(depth: float, lo: float, hi: float) -> bool:
    return lo == hi == depth or lo <= depth < hi or (hi == 1.0 and depth == 1.0)


def depth_grid(rows: list[dict]) -> tuple[list[tuple[float, float]], list[int], dict[tuple, dict]]:
    """(depth bins, context lengths, config -> {(bin, context): (summed score, samples)})."""
    placed = [(r, depth_of(r)) for r in rows]
    placed = [(r, d) for r, d in placed if d is not None]
    bins = depth_bins([d for _, d in placed])
    contexts = sorted({r["context"] for r, _ in placed})
    cells: dict = defaultdict(lambda: defaultdict(list))
    for r, d in placed:
        for b in bins:
            if _in_bin(d, *b):
                cells[config_of(r)][(b, r["context"])].append(r["score"])
                break
    return bins, contexts, {c: {k: (sum(v), len(v)) for k, v in cell.items()} for c, cell in cells.items()}


def depth_accuracy(cell: tuple[float, int] | None) -> float:
    """A `depth_grid` cell's accuracy (summed score over samples); NaN where nothing was placed."""
    return math.nan if cell is None else cell[0] / cell[1]


def ordered_configs(configs) -> list[tuple]:
    """Full KV first, then by eviction ratio (or budget) and name."""
    return sorted(
        set(configs), key=lambda c: (c[0] != "full", c[1] if c[1] is not None else 2.0, -(c[2] or 0), c[0])
    )

"""README's headline: per registry model with RULER results, IndexMem (the model's default
configuration) at 0.75 and 0.9 eviction beside full KV and the best heuristic, the cache each
allocates, and decode speed against llama.cpp; and the picture of their compression curves."""

from __future__ import annotations

import math
from pathlib import Path

from ...engine.registry import MODELS
from ...markdown import table
from ..ruler.paired import best_heuristic
from ..ruler.plots import average_panels
from ..ruler.summary import average, average_error, cache_bytes, task_scores
from ..ruler.table import megabytes
from ..speed_results import LEGACY_LLAMA_CPP, is_llama_cpp, llama_cpp_setting, ratio

RATIOS = (0.75, 0.9)
FULL = ("full", 0.0, None)
GOAL = 0.7  # IndexMem's target: this share of full KV's RULER score at the highest ratio
GOAL_SAMPLES = 10  # the issues judge the goal on at least this many samples per task


def default_config(model: str) -> str:
    """The configuration Engine.load gives the model: IndexMem with its memory where the registry
    turns the memory on, else the indexer alone."""
    return "indexmem" if MODELS[model].memory else "indexmem-nomem"


def _score(scores: dict, config: tuple, full: float | None, tasks: list[str], name: str = "") -> str:
    if config not in scores or (avg := average(scores[config], tasks)) is None:
        return "–"
    err = average_error(scores[config], tasks)
    share = f"{avg / full:.0%}" if full else ""
    notes = ", ".join(filter(None, [share, name]))
    return (
        f"{100 * avg:.1f}"
        + (f" ± {100 * err:.1f}" if err is not None else "")
        + (f" ({notes})" if notes else "")
    )


def _decode(speed: dict | None, spec: str | None) -> str:
    if speed is None or spec is None:
        return "–"
    context = max(r["context"] for r in speed["rows"])
    found = ratio(speed, spec, context, "decode")
    return "–" if found is None else f"{found.value:.2f}x"


def model_table(model: str, rows: list[dict], speed: dict | None) -> str:
    """The headline table of one model, at the longest context its RULER rows have, with its caption."""
    context = max(r["context"] for r in rows)
    rows = [r for r in rows if r["context"] == context]
    tasks = sorted({r["task"] for r in rows})
    scores = {config: s for (config, _), s in task_scores(rows).items()}
    cache = {config: b for (config, _), b in cache_bytes(rows).items()}
    full = average(scores[FULL], tasks) if FULL in scores else None
    ours = default_config(model)
    best = {r: best_heuristic(scores, (r, None), tasks) for r in RATIOS}

    def mb(config):
        return megabytes(cache[config]) if config in cache else "–"

    lines = [
        ["full KV", *(_score(scores, FULL, None, tasks) for _ in RATIOS), *(mb(FULL) for _ in RATIOS)]
        + [_decode(speed, "full")],
        [f"**IndexMem** (`{ours}`)", *(_score(scores, (ours, r, None), full, tasks) for r in RATIOS)]
        + [mb((ours, r, None)) for r in RATIOS]
        + [_decode(speed, ours)],
        [
            "best heuristic",
            *(_score(scores, best[r], full, tasks, best[r][0]) if best[r] else "–" for r in RATIOS),
        ]
        + [mb(best[r]) if best[r] else "–" for r in RATIOS]
        + [_decode(speed, best[RATIOS[-1]][0] if best[RATIOS[-1]] else None)],
    ]
    headers = (
        ["configuration"]
        + [f"RULER @ {r:g}" for r in RATIOS]
        + [f"cache MB @ {r:g}" for r in RATIOS]
        + ["decode vs llama.cpp"]
    )
    samples = len({r["index"] for r in rows})
    lead = (
        f"**{model}**: RULER at {context:,} tokens ({len(tasks)} tasks, {samples} sample{'s' * (samples != 1)} "
        f"per task); "
        f"{_decode_setting(speed)}."
    )
    goal = _goal(scores, (ours, RATIOS[-1], None), full, tasks, samples)
    return "\n\n".join(filter(None, [lead, table(headers, lines), goal]))


def _goal(scores: dict, config: tuple, full: float | None, tasks: list[str], samples: int) -> str:
    """Whether IndexMem's score at the highest ratio reaches GOAL x full KV's, and whether the
    gap is within one standard error of it (the two averages' errors combined); no verdict from
    fewer than GOAL_SAMPLES samples."""
    if not full or config not in scores or (avg := average(scores[config], tasks)) is None:
        return ""
    target = GOAL * full
    ours_err, full_err = average_error(scores[config], tasks), average_error(scores[FULL], tasks)
    verdict = "met" if avg >= target else "not met"
    if samples < GOAL_SAMPLES:
        verdict = f"{samples} of the {GOAL_SAMPLES} samples it is judged on"
    elif (
        ours_err is not None
        and full_err is not None
        and abs(avg - target) <= math.hypot(ours_err, GOAL * full_err)
    ):
        verdict += ", within one standard error"
    return (
        f"IndexMem's goal is {GOAL:.0%} of full KV's score at {RATIOS[-1]:g}: {avg / full:.0%} here "
        f"({100 * avg:.1f} against {100 * target:.1f}; {verdict})."
    )


def _fastest_decode(speed: dict):
    """The decode ratio's reference at the run's longest context: llama.cpp's fastest setting."""
    context = max(r["context"] for r in speed["rows"])
    return context, max(
        (r for r in speed["rows"] if r["context"] == context and is_llama_cpp(r)), key=lambda r: r["decode"]
    )


def _decode_setting(speed: dict | None) -> str:
    if speed is None:
        return "decode not measured against llama.cpp yet"
    context, best = _fastest_decode(speed)
    settings = sum(1 for r in speed["rows"] if r["context"] == context and is_llama_cpp(r))
    which = f"the fastest of {settings} settings measured" if settings > 1 else "the only setting measured"
    budget = f" with B={speed['budget']:,}" if speed.get("budget") else ""
    return (
        f"decode at {context:,} tokens{budget} against llama.cpp with {llama_cpp_setting(best, speed)} "
        f"({which})"
    )


def _notes(models: list[tuple[str, list[dict], dict | None]]) -> str:
    legacy = llama_cpp_setting(LEGACY_LLAMA_CPP, {})
    only_legacy = any(
        speed is not None
        and sum(1 for r in speed["rows"] if r["context"] == _fastest_decode(speed)[0] and is_llama_cpp(r))
        == 1
        and llama_cpp_setting(_fastest_decode(speed)[1], speed) == legacy
        for _, _, speed in models
    )
    caveat = (
        f" Where a run measured llama.cpp only with {legacy}: on this machine llama.cpp decodes faster "
        "without flash attention (issue 45), so those ratios overstate ours."
        if only_legacy
        else ""
    )
    return (
        "RULER: score x100, the mean over tasks ± its standard error, in brackets the share of full KV's "
        "score; the best heuristic is the one with the highest average at that ratio. Cache MB: KV + "
        "index keys + latent memory allocated at that length. Decode: our tok/s over llama.cpp's with a "
        "full KV cache on the same GGUF and threads (the best heuristic's where the run measured the best "
        f"at {RATIOS[-1]:g}).{caveat}"
    )


def headline(models: list[tuple[str, list[dict], dict | None]]) -> str:
    """``models``: (registry name, its RULER rows, its speed results or None), in registry order."""
    if not models:
        return "No registry model has RULER results yet."
    return "\n\n".join([*(model_table(*m) for m in models), _notes(models)])


def headline_plot(models: list[tuple[str, list[dict], dict | None]], path: Path) -> None:
    named = [(f"{name}, {max(r['context'] for r in rows):,} tokens", rows) for name, rows, _ in models]
    average_panels(named, path, "RULER average over tasks against eviction ratio")

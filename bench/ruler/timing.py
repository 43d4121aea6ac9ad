"""Where a RULER sweep's time went, sample by sample: a long sweep is measured over many sessions
and machines, and a table generated from the rows says what each sample cost without anyone
keeping a tally by hand."""

from __future__ import annotations

import statistics
from collections import defaultdict

from .summary import config_label, config_of


def time_table(rows: list[dict]) -> str:
    """One table per context length: a line per sample with its examples, their compute time (the
    sum of the rows' seconds, prefill to the last decoded token; wall time is this over the
    processes that shared the sweep), the median example, full KV's median and the slowest
    configuration's. Empty when no row has a time."""
    samples: dict = defaultdict(lambda: defaultdict(list))  # context -> sample index -> rows
    for r in rows:
        if r.get("seconds") is not None:
            samples[r["context"]][r["index"]].append(r)
    out = []
    for context in sorted(samples):
        out += [
            f"{context:,} tokens, compute time per sample (1 thread per process; s = seconds per example)",
            "",
            "| sample | examples | compute h | median s | full KV median s | slowest median s |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        out += [_sample_line(index, samples[context][index]) for index in sorted(samples[context])]
        timed = [r for sample in samples[context].values() for r in sample]
        out += [f"| all | {len(timed):,} | {sum(r['seconds'] for r in timed) / 3600:.1f} | | | |", ""]
    return "\n".join(out).rstrip()


def _sample_line(index: int, rows: list[dict]) -> str:
    by_config: dict = defaultdict(list)
    for r in rows:
        by_config[config_of(r)].append(r["seconds"])
    medians = {c: statistics.median(s) for c, s in by_config.items()}
    full = next((m for c, m in medians.items() if c[0] == "full"), None)
    slowest = max(medians, key=medians.get)
    return (
        f"| {index + 1} | {len(rows)} | {sum(r['seconds'] for r in rows) / 3600:.2f} | "
        f"{statistics.median(r['seconds'] for r in rows):.0f} | {'–' if full is None else f'{full:.0f}'} | "
        f"{medians[slowest]:.0f} ({config_label(slowest)}) |"
    )

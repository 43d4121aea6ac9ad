"""The fuzz report: counts per kind and outcome, per mutator, timings, the most common errors,
the errors that do not name their file, and every failing case; plus its summary table."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..markdown import table
from .cases import SessionTarget, SidecarTarget

OUTCOMES = ("ok", "error", "other-exception", "crash", "hang")
BUGS = ("other-exception", "crash", "hang")


def _mutator(what: str) -> str:
    return "+".join(part.split(":", 1)[0].split(" ")[0] for part in what.split("; "))


def _normalize(message: str) -> str:
    """An error message without its paths and numbers, so equal checks count together."""
    message = re.sub(r"/\S+?(?=[:\s,)]|$)", "<path>", message)
    return re.sub(r"\d+", "N", message)[:140]


class FuzzReport:
    """Counts per kind, outcome and mutator, timings, common errors and the failing cases."""

    def __init__(self, seed: int, cases: int, kinds: list[str], targets: list):
        self.seed, self.cases, self.kinds = seed, cases, kinds
        self.targets = [f"{t.kind}: {describe_target(t)}" for t in targets]
        self.counts = {k: Counter() for k in kinds}
        self.seconds = Counter()
        self.by_mutator = {k: {} for k in kinds}
        self.messages = {k: Counter() for k in kinds}
        self.errors_after_load = Counter()
        self.unnamed = {k: Counter() for k in kinds}  # error messages that do not name the file
        self.failures = []
        self.restarts = 0

    def add(self, kind, index, target, what, result, seconds, saved, named: bool) -> None:
        outcome = result["outcome"]
        self.counts[kind][outcome] += 1
        self.seconds[kind] += seconds
        self.by_mutator[kind].setdefault(_mutator(what), Counter())[outcome] += 1
        if outcome == "error":
            self.messages[kind][_normalize(result.get("message", ""))] += 1
            self.errors_after_load[kind] += result.get("stage") == "use"
            if not named and result.get("stage") == "load":  # a later error is about use, not the file
                self.unnamed[kind][_normalize(result.get("message", ""))] += 1
        if outcome in BUGS:
            self.failures.append(
                {
                    "case": f"{kind}-{index:05d}",
                    "target": describe_target(target),
                    "mutation": what,
                    **{
                        k: result.get(k)
                        for k in ("outcome", "stage", "message", "traceback", "stderr")
                        if result.get(k)
                    },
                    "saved": saved,
                }
            )

    def as_dict(self) -> dict:
        totals = Counter()
        for c in self.counts.values():
            totals.update(c)
        return {
            "seed": self.seed,
            "cases": self.cases,
            "kinds": self.kinds,
            "targets": self.targets,
            "totals": {o: totals[o] for o in OUTCOMES},
            "counts": {k: {o: self.counts[k][o] for o in OUTCOMES} for k in self.kinds},
            "seconds": {
                **{k: round(self.seconds[k], 1) for k in self.kinds},
                "total": round(sum(self.seconds.values()), 1),
            },
            "worker_restarts": self.restarts,
            "errors_after_load": {k: self.errors_after_load[k] for k in self.kinds},
            "errors_not_naming_the_file": {k: self.unnamed[k].most_common(10) for k in self.kinds},
            "by_mutator": {k: {m: dict(c) for m, c in sorted(v.items())} for k, v in self.by_mutator.items()},
            "common_errors": {k: self.messages[k].most_common(25) for k in self.kinds},
            "failures": self.failures,
        }


def describe_target(target) -> str:
    if isinstance(target, SidecarTarget):
        return f"{target.sidecar.name} with {target.model.name}"
    if isinstance(target, SessionTarget):
        options = {k: Path(v).name if k == "indexmem" and v else v for k, v in target.options.items()}
        return f"{target.model.name} {json.dumps(options, sort_keys=True)}"
    return target.model.name


_KIND_LABELS = {"gguf": "GGUF models", "sidecar": "IndexMem sidecars", "session": "session files"}
_OUTCOME_LABELS = {o: o.replace("-", " ") for o in OUTCOMES} | {"error": "clean error"}


def markdown_summary(report: dict) -> str:
    """The outcomes per kind of file, as a markdown table."""
    rows = []
    for kind in report["kinds"]:
        counts = report["counts"][kind]
        rows.append(
            [_KIND_LABELS.get(kind, kind), f"{sum(counts.values()):,}", *(f"{counts[o]:,}" for o in OUTCOMES)]
        )
    return table(["kind", "cases", *(_OUTCOME_LABELS[o] for o in OUTCOMES)], rows)


def print_summary(report: dict, console: Console) -> None:
    table = Table(title=f"fuzz: {report['cases']} cases, seed {report['seed']}")
    for col in ("kind", "cases", *OUTCOMES, "seconds", "s/case"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    rows = [(k, report["counts"][k], report["seconds"][k]) for k in report["kinds"]]
    rows.append(("total", report["totals"], report["seconds"]["total"]))
    for kind, counts, seconds in rows:
        n = sum(counts.values())
        cells = [
            str(counts[o]) if o not in BUGS or not counts[o] else f"[bold red]{counts[o]}" for o in OUTCOMES
        ]
        table.add_row(kind, str(n), *cells, f"{seconds:.0f}", f"{seconds / max(n, 1):.2f}")
    console.print(table)
    for f in report["failures"][:20]:
        console.print(
            f"[red]{f['outcome']}[/] {f['case']} ({f['mutation'][:100]}): {f.get('message', '')[:200]}"
        )

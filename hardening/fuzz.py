"""Fuzz the files the engine reads: GGUF models, IndexMem sidecars and session files.

Every case is a mutated file loaded (and briefly used) in a child process; it must end ``ok`` or
in a clean ``IndexmemError`` (``error``). ``other-exception``, ``crash`` and ``hang`` are bugs:
their inputs are saved for ``--replay``. Cases are deterministic given the seed.

    python -m indexmem.hardening.fuzz --cases 1000 --kinds gguf,sidecar,session --seed 0 \
        --out docs/results/fuzz-report.json
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .cases import GGUFTarget, SessionTarget, SidecarTarget, make_source
from .child import Worker
from .report import BUGS, OUTCOMES, FuzzReport, print_summary

KINDS = ("gguf", "sidecar", "session")


def run_fuzz(
    targets: list,
    cases: int,
    seed: int = 0,
    failures_dir: Path | None = None,
    timeout: float = 60.0,
    on_case=lambda kind, result: None,
) -> dict:
    """Run ``cases`` cases spread evenly over the targets' kinds; return the report."""
    kinds = [k for k in KINDS if any(t.kind == k for t in targets)]
    with tempfile.TemporaryDirectory(prefix="indexmem-fuzz-") as tmp:
        worker = Worker(Path(tmp) / "worker.log")
        try:
            if worker.run({"op": "ping"}, timeout)["outcome"] != "ok":
                raise RuntimeError("the fuzz worker does not start")
            sources = {
                k: [make_source(t, Path(tmp), worker, timeout) for t in targets if t.kind == k] for k in kinds
            }
            report = FuzzReport(seed, cases, kinds, targets)
            for i in range(cases):
                kind, k_index = kinds[i % len(kinds)], i // len(kinds)
                source = sources[kind][k_index % len(sources[kind])]
                rng = random.Random(f"{seed}:{kind}:{k_index}")
                t0 = time.perf_counter()
                with source.case(rng) as (what, request):
                    result = worker.run(request, timeout)
                    saved = _keep(source, request, result, failures_dir, f"{kind}-{k_index:05d}", what)
                report.add(
                    kind,
                    k_index,
                    source.target,
                    what,
                    result,
                    time.perf_counter() - t0,
                    saved,
                    named=request["path"] in result.get("message", ""),
                )
                on_case(kind, result)
            report.restarts = worker.restarts
            return report.as_dict()
        finally:
            worker.close()


def _keep(source, request: dict, result: dict, failures_dir: Path | None, name: str, what: str) -> str | None:
    if result["outcome"] not in BUGS or failures_dir is None:
        return None
    failures_dir.mkdir(parents=True, exist_ok=True)
    dest = failures_dir / name
    record = {"request": request, "mutation": what, "result": result, **source.keep(request, dest)}
    dest.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return str(dest.with_suffix(".json"))


# --- targets of the command line ----------------------------------------------------------------
def registry_targets(models: list[str], kinds: list[str]) -> list:
    """Each registry model's GGUF, its shipped sidecar, and its sessions with IndexMem and the
    latent memory; the first model's sessions with SnapKV (policy state, no modules) and with
    quantized K/V caches (q8_0, q4_0; IndexMem and the memory) as well."""
    from ..engine.indexmem import SIDECAR_DIR
    from ..engine.registry import MODELS, resolve

    small = {"budget": 64, "tau": 8, "n_batch": 32, "n_ctx": 1024}  # evicts within a 160-token prompt
    targets = []
    for i, name in enumerate(models):
        path, sidecar = resolve(name), SIDECAR_DIR / MODELS[name].sidecar
        if "gguf" in kinds:
            targets.append(GGUFTarget(path))
        if "sidecar" in kinds:
            targets.append(SidecarTarget(path, sidecar))
        if "session" in kinds:
            targets.append(
                SessionTarget(
                    path,
                    {"indexmem": str(sidecar), "policy": "indexmem", "memory": True, "window": 8, **small},
                    prompt=160,
                )
            )
            if i == 0:
                targets.append(
                    SessionTarget(path, {"indexmem": False, "policy": "snapkv", **small}, prompt=160)
                )
                for t in ("q8_0", "q4_0"):
                    quantized = {"cache_type_k": t, "cache_type_v": t}
                    targets.append(
                        SessionTarget(
                            path,
                            {
                                "indexmem": str(sidecar),
                                "policy": "indexmem",
                                "memory": True,
                                "window": 8,
                                **small,
                                **quantized,
                            },
                            prompt=160,
                        )
                    )
    return targets


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    cases: int = typer.Option(300, help="number of cases, spread evenly over the kinds"),
    kinds: str = typer.Option(",".join(KINDS), help="comma-separated: gguf, sidecar, session"),
    seed: int = typer.Option(0),
    models: str = typer.Option("smollm2-135m-instruct,gemma3-270m", help="comma-separated registry models"),
    out: Path = typer.Option(Path("fuzz-report.json"), help="report (JSON)"),
    failures: Path = typer.Option(None, help="folder for failing inputs (default: next to the report)"),
    timeout: float = typer.Option(60.0, help="seconds before a case counts as a hang"),
    replay: Path = typer.Option(None, help="re-run one saved failing case in this process and exit"),
):
    console = Console()
    if replay is not None:
        from .replay import replay_case

        console.print_json(json.dumps(replay_case(replay)))
        return
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(kind_list) - set(KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kinds {unknown}; choose from {KINDS}")
    targets = registry_targets([m.strip() for m in models.split(",")], kind_list)
    failures = failures or out.with_name(out.stem + "-failures")
    shutil.rmtree(failures, ignore_errors=True)
    counts = Counter()
    columns = (
        TextColumn("[bold]fuzz"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("fuzz", total=cases, counts="")

        def on_case(kind, result):
            counts[result["outcome"]] += 1
            progress.update(
                task, advance=1, counts="  ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o])
            )

        t0 = time.perf_counter()
        report = run_fuzz(targets, cases, seed, failures, timeout, on_case)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["command"] = (
        f"python -m indexmem.hardening.fuzz --cases {cases} --kinds {','.join(kind_list)} "
        f"--seed {seed} --models {models}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report, console)
    console.print(f"report: {out}" + (f"; failing inputs: {failures}" if report["failures"] else ""))
    raise typer.Exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    app()

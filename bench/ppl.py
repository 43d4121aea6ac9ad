"""Perplexity of every eviction policy on held-out long text, at several eviction ratios.

    python -m indexmem.bench.ppl --model smollm2-135m-instruct --context 4096 --ratios 0.5,0.75,0.9

Configurations as in :mod:`indexmem.bench.specs` (``indexmem``, ``indexmem-nomem``, heuristics,
``<heuristic>+mem``); IndexMem uses ``--indexmem`` or the modules shipped for a registry model.

Each window is prefilled in chunks of ``--n-batch`` tokens; between chunks every layer is
compressed to its budget (budget = (1 - ratio) x context), so later tokens are predicted from the
compressed cache, as they would be in a long prompt. Physical eviction: the cache really holds
only the budget.

With ``--out`` the JSON is rewritten after every configuration, and a rerun into the same file
measures only what is missing: results stand for the same settings, the same model file and, for
configurations that run IndexMem's modules, the same IndexMem file.
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
from ..cli.engine_options import CacheTypeK, CacheTypeV
from ..engine.api import Engine
from ..engine.cache_types import CacheTypes, parse_cache_types
from ..engine.eviction import budget_from_ratio
from ..engine.registry import DEFAULT_MODEL, resolve, sha256_of
from .heldout import heldout_windows
from .specs import HEURISTICS, engine_options, measured_with_files, modules_sha256, parse_specs

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    policies: str = typer.Option(
        "indexmem,indexmem-nomem," + ",".join(HEURISTICS),
        "--policies",
        "--policy",
        help="comma separated; full KV is always measured",
    ),
    ratios: str = typer.Option("0.5,0.75,0.9", help="eviction ratios"),
    context: int = typer.Option(4096, help="tokens per window"),
    windows: int = typer.Option(2, help="disjoint held-out windows"),
    n_batch: int = typer.Option(64, help="prefill chunk (eviction happens between chunks)"),
    threads: int = typer.Option(1),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar (default: merged or shipped)"),
    window: int = typer.Option(64, help="most recent tokens every policy keeps"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
):
    console = Console()
    types = parse_cache_types(cache_type_k, cache_type_v)
    path = resolve(model, console.print)
    sha = sha256_of(path)
    modules = modules_sha256(model, path, sha, str(indexmem) if indexmem else None)
    settings = dict(model_sha256=sha, context=context, n_batch=n_batch, windows=windows, window=window)
    if types != CacheTypes():  # files of f16 runs, older ones included, do not name their types
        settings.update(cache_type_k=types.k, cache_type_v=types.v)
    earlier = earlier_results(out, settings, modules)
    configs = [("full", 0.0)] + [(p, float(r)) for p in parse_specs(policies) for r in ratios.split(",")]
    docs = None
    results = []
    with Progress(console=console) as progress:
        task = progress.add_task("perplexity", total=len(configs) * windows)
        for policy, ratio in configs:
            if (policy, ratio) in earlier:
                results.append(earlier[(policy, ratio)])
                progress.advance(task, windows)
                continue
            opts = engine_options(
                policy, budget_from_ratio(context, ratio), str(indexmem) if indexmem else None, window
            )
            engine = Engine.load(
                model,
                n_threads=threads,
                n_ctx=context,
                n_batch=n_batch,
                cache_type_k=types.k,
                cache_type_v=types.v,
                **opts,
            )
            docs = docs or heldout_windows(engine, context, windows)
            t0, nll = time.perf_counter(), []
            for doc in docs:
                nll.append(engine.token_nll(doc))
                progress.advance(task)
            nll = np.concatenate(nll)
            results.append(
                dict(
                    policy=policy,
                    evict_ratio=ratio,
                    budget=opts.get("budget"),
                    ppl=float(np.exp(nll.mean())),
                    tokens=int(nll.size),
                    kv_bytes=engine.stats()["kv_bytes"],
                    seconds=round(time.perf_counter() - t0, 1),
                    model_sha256=sha,
                    indexmem_sha256=modules.for_config(policy) if modules else None,
                )
            )
            engine.close()
            if out:
                kept = [r for r in earlier.values() if r not in results]
                write_atomic(
                    out,
                    json.dumps(dict(model=str(path), **settings, results=results + kept), indent=2).encode(),
                )
    full = results[0]["ppl"]
    table = Table(
        title=f"{path.name}: perplexity on held-out text, {windows} x {context} tokens, chunks of {n_batch}"
    )
    for col in ("policy", "evict ratio", "budget", "perplexity", "vs full", "KV bytes"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["policy"],
            f"{r['evict_ratio']:.2f}",
            str(r["budget"] or "-"),
            f"{r['ppl']:.3f}",
            f"{r['ppl'] / full:.3f}x",
            f"{r['kv_bytes']:,}",
        )
    console.print(table)


def earlier_results(out: Path | None, settings: dict, modules_sha256) -> dict:
    """{(configuration, ratio): row} of an earlier run into ``out`` that still stand. A file that
    records other settings is not overwritten (error); one from before files recorded their
    settings and model in full is measured again if what it records matches."""
    if out is None or not Path(out).exists():
        return {}
    try:
        data = json.loads(Path(out).read_text())
        recorded = {k: data[k] for k in settings if k in data}
        rows = list(data["results"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{out} is not a perplexity result file ({exc}); remove it or choose another --out"
        ) from exc
    for key in ("cache_type_k", "cache_type_v"):  # f16 when the file does not say
        recorded[key] = data.get(key, "f16")
        settings = {key: "f16", **settings}
    if not {"context", "n_batch"} <= recorded.keys() or any(recorded[k] != settings[k] for k in recorded):
        raise ValueError(
            f"{out} holds perplexity measured with other settings "
            f"({', '.join(f'{k}={v}' for k, v in recorded.items())}); "
            "remove it or choose another --out"
        )
    if recorded.keys() != settings.keys():
        return {}
    return {
        (r["policy"], r["evict_ratio"]): r
        for r in rows
        if measured_with_files({**r, "config": r["policy"]}, settings["model_sha256"], modules_sha256)
    }


if __name__ == "__main__":
    app()

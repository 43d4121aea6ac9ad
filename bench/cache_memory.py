"""The cache memory a context costs: llama.cpp's full KV cache in each of its cache types, beside
ours bounded at a budget (KV + IndexMem's index keys + latent memory) in each of ours. Bytes as
allocated: llama.cpp's for every layer's K and V rows of the context, checked against its own log
("KV buffer size"); ours from ``Engine.stats()``.

    python -m indexmem.bench.cache_memory --model smollm2-135m-instruct --context 8192 --budget 1024 \\
        --out docs/results/cache-memory-smollm2-8k.json
"""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import typer
from rich.console import Console

from ..atomic import write_atomic
from ..engine.api import Engine
from ..engine.cache_types import CACHE_TYPES, parse_cache_types
from ..engine.hparams import read_hparams
from ..engine.loader import open_gguf
from ..engine.models import ARCHITECTURES
from ..engine.registry import DEFAULT_MODEL, resolve, sha256_of
from ..ggml_ops.bindings import C
from ..markdown import table
from .llama_cpp_ref import open_llama_cpp
from .specs import engine_options, parse_specs

app = typer.Typer(add_completion=False, help=__doc__)

_KV_LINE = re.compile(r"KV buffer size\s*=\s*([0-9.]+)\s*MiB")


def llama_cpp_kv_bytes(path: Path, n_ctx: int, type_k: str, type_v: str) -> int:
    """The KV buffer llama.cpp allocates for ``n_ctx`` tokens: every layer's K and V rows for the
    context (padded to 256 slots, as llama.cpp pads it), checked against the size its log reports
    (which it rounds to 0.01 MiB)."""
    import llama_cpp
    import llama_cpp._logger as default_logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        llm = open_llama_cpp(
            path,
            n_ctx=n_ctx,
            n_threads=1,
            flash_attn=True,  # llama.cpp needs it for a quantized V
            type_k=CACHE_TYPES[type_k],
            type_v=CACHE_TYPES[type_v],
            verbose=False,
        )
        llm.close()
    finally:
        llama_cpp.llama_log_set(default_logger.llama_log_callback, ctypes.c_void_p(0))
    logged = [float(m[1]) for line in lines if (m := _KV_LINE.search(line))]
    with open_gguf(path) as gguf:
        hp = read_hparams(gguf, ARCHITECTURES[gguf.get("general.architecture")].swa_default_pattern)
    slots = -(-n_ctx // 256) * 256
    row = C.ggml_row_size(CACHE_TYPES[type_k], hp.n_embd_kv) + C.ggml_row_size(
        CACHE_TYPES[type_v], hp.n_embd_kv
    )
    exact = hp.n_layer * slots * row
    if not logged or abs(exact / 2**20 - sum(logged)) > 0.006 * len(logged):
        raise RuntimeError(
            f"llama.cpp logged a KV buffer of {logged} MiB, not the {exact / 2**20:.2f} MiB expected"
        )
    return exact


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    context: int = typer.Option(8192, help="tokens of context"),
    budget: int = typer.Option(1024, help="our KV budget per layer"),
    policies: str = typer.Option(
        "indexmem", "--policies", "--policy", help="our configurations, comma separated (see bench.specs)"
    ),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar (default: merged or shipped)"),
    llama_cpp_types: str = typer.Option("f16,q8_0", help="llama.cpp's K/V types (K = V), comma separated"),
    our_types: str = typer.Option("f16,q8_0,q4_0", help="our K/V types (K = V), comma separated"),
    out: Path = typer.Option(None, help="also write the rows as JSON here"),
):
    console = Console()
    specs = parse_specs(policies)  # a bad name fails before anything is measured
    types = [parse_cache_types(x, x).k for x in our_types.split(",")]
    path = resolve(model, console.print)
    rows = []
    for t in (parse_cache_types(x, x).k for x in llama_cpp_types.split(",")):
        kv = llama_cpp_kv_bytes(path, context, t, t)
        rows.append(
            dict(
                engine="llama.cpp",
                cache="full",
                type_k=t,
                type_v=t,
                kv_bytes=kv,
                index_bytes=0,
                memory_bytes=0,
            )
        )
    sidecar = str(indexmem) if indexmem else None
    for policy in specs:
        for t in types:
            engine = Engine.load(
                model,
                n_ctx=context,
                cache_type_k=t,
                cache_type_v=t,
                **engine_options(policy, budget, sidecar),
            )
            st = engine.stats()
            engine.close()
            rows.append(
                dict(
                    engine="ours",
                    cache=policy,
                    budget=budget if policy != "full" else None,
                    type_k=t,
                    type_v=t,
                    kv_bytes=st["kv_bytes"],
                    index_bytes=st["index_bytes"],
                    memory_bytes=st["memory_bytes"],
                )
            )
    data = dict(model=str(path), context=context, budget=budget, rows=rows)
    if indexmem:
        data["indexmem"] = sha256_of(indexmem)
    console.print(memory_table(data))
    if out:
        write_atomic(out, json.dumps(data, indent=2).encode())


def cache_bytes(row: dict) -> int:
    return row["kv_bytes"] + row["index_bytes"] + row["memory_bytes"]


def memory_table(data: dict) -> str:
    """A row per cache: MB of KV, index keys, latent memory, their total, and the share of
    llama.cpp's full f16 cache (the first row when the file has none)."""
    rows = data["rows"]
    base = next(
        (r for r in rows if r["engine"] == "llama.cpp" and r["type_k"] == r["type_v"] == "f16"), rows[0]
    )
    lines = []
    for r in rows:
        if r["engine"] == "llama.cpp":
            what = "llama.cpp, full KV"
        elif r.get("budget") is None:
            what = f"ours, {r['cache']} KV"
        else:
            what = f"ours, {r['cache']} B={r['budget']:,}"
        types = r["type_k"] if r["type_k"] == r["type_v"] else f"K {r['type_k']} / V {r['type_v']}"
        lines.append(
            [
                what,
                types,
                *(f"{r[k] / 1e6:.2f}" for k in ("kv_bytes", "index_bytes", "memory_bytes")),
                f"{cache_bytes(r) / 1e6:.2f}",
                f"{100 * cache_bytes(r) / cache_bytes(base):.1f}%",
            ]
        )
    return table(
        ["cache", "K/V type", "KV MB", "index MB", "memory MB", "total MB", "of llama.cpp f16"],
        lines,
        align="llrrrrr",
    )


if __name__ == "__main__":
    app()

"""Each attention path (engine/attention.py) timed alone on one model's attention shapes: a graph of
every layer's attention over a cache of random K/V, the paths built and timed in turn in one
process, best of ``--reps`` (so a busy machine slows them alike). The figures behind
``engine/attention.py``'s RULE come from this script.

    python -m indexmem.bench.attention_paths --model smollm2-135m-instruct \\
        --shapes 1x256,1x1280,1x4352,16x1280,512x512,512x1536 --types f16,q8_0,q4_0,q8_0/f16
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import typer
from rich.console import Console

from ..engine.attention import KERNEL, PATHS, attend, attention_kernel
from ..engine.cache import head_view
from ..engine.cache_types import CacheTypes, parse_cache_types
from ..engine.hparams import read_hparams
from ..engine.loader import open_gguf
from ..engine.models import ARCHITECTURES
from ..engine.registry import DEFAULT_MODEL, resolve
from ..ggml_ops.backend import Backend
from ..ggml_ops.bindings import C
from ..ggml_ops.graph import Graph, new_context
from ..ggml_ops.structs import GGMLType
from ..markdown import table

app = typer.Typer(add_completion=False, help=__doc__)


class Caches:
    """Every layer's K and V, [n_embd_kv, capacity] of the given types, filled with N(0, 1)."""

    def __init__(self, backend: Backend, types: CacheTypes, n_layer: int, n_embd_kv: int, capacity: int):
        self.ctx = new_context(2 * n_layer + 1)
        self.k = [C.ggml_new_tensor_2d(self.ctx, types.ggml_k, n_embd_kv, capacity) for _ in range(n_layer)]
        self.v = [C.ggml_new_tensor_2d(self.ctx, types.ggml_v, n_embd_kv, capacity) for _ in range(n_layer)]
        self.buffer = backend.alloc_ctx_tensors(self.ctx)
        g = Graph(4 * n_layer + 8)
        rows = g.input("rows", GGMLType.I64, capacity)
        src = g.input("src", GGMLType.F32, n_embd_kv, capacity)
        for t in self.k + self.v:
            g.expand(C.ggml_set_rows(g.ctx, t, src, rows))
        backend.alloc_graph(g.gf, maintenance=True)
        g.set_input("rows", np.arange(capacity, dtype=np.int64))
        values = np.random.default_rng(0).standard_normal((capacity, n_embd_kv)).astype(np.float32)
        g.set_input("src", values)
        backend.compute(g.gf, maintenance=True)
        g.close()

    def close(self) -> None:
        C.ggml_backend_buffer_free(self.buffer)
        C.ggml_free(self.ctx)


def model_hparams(model: str, say):
    """The hyper-parameters of a registry model or .gguf path."""
    with open_gguf(resolve(model, say)) as gguf:
        return read_hparams(gguf, ARCHITECTURES[gguf.get("general.architecture")].swa_default_pattern)


def step_mask(n_tokens: int, n_kv: int) -> tuple[np.ndarray, int]:
    """The causal mask of a step after the cache's used slots: decode over a cache padded to the
    next 256 (16 slots of the last block used), prefill after ``n_kv - n_tokens`` cached tokens."""
    n_used = n_kv - 256 + 16 if n_tokens == 1 else n_kv - n_tokens
    s, t = np.arange(n_kv)[None, :], np.arange(n_tokens)[:, None]
    visible = (s < n_used) | ((s >= n_used) & (s - n_used <= t))
    return np.where(visible, np.float16(0), np.float16(-np.inf)), n_used


def time_path(backend, caches, path, hp, n_tokens, n_kv, mask, reps) -> float:
    """Seconds of one step's attention, every layer, by ``path``."""
    g = Graph()
    q = g.input("q", GGMLType.F32, hp.head_dim, hp.n_head, n_tokens)
    m = g.input("mask", GGMLType.F16, n_kv, n_tokens)
    out = None
    for k, v in zip(caches.k, caches.v):
        kview, vview = head_view(g.ctx, k, hp.head_dim, n_kv), head_view(g.ctx, v, hp.head_dim, n_kv)
        cur = attend(g.ctx, path, q, kview, vview, m, 1.0 / np.sqrt(hp.head_dim))
        out = cur if out is None else C.ggml_add(g.ctx, out, cur)
    g.output(out)
    backend.alloc_graph(g.gf)
    g.set_input(
        "q", np.random.default_rng(1).standard_normal((n_tokens, hp.n_head, hp.head_dim)).astype(np.float32)
    )
    g.set_input("mask", mask)
    backend.compute(g.gf)  # warm
    t0 = time.perf_counter()
    for _ in range(reps):
        backend.compute(g.gf)
    seconds = (time.perf_counter() - t0) / reps
    g.close()
    return seconds


@dataclass
class Case:
    """One step shape over a cache of one pair of types, ready to time."""

    backend: Backend
    hp: object
    caches: Caches
    n_tokens: int
    n_kv: int
    mask: np.ndarray
    shape_label: str
    types_label: str

    def time(self, path: str, loops: int) -> float:
        return time_path(self.backend, self.caches, path, self.hp, self.n_tokens, self.n_kv, self.mask, loops)


def cases(backend: Backend, hp, shapes: str, types: str):
    """Every TOKENSxSLOTS shape of ``shapes`` with every K/V spec of ``types`` (K or K/V), its
    cache of random rows allocated while the case is in hand."""
    for shape in shapes.split(","):
        n_tokens, n_kv = (int(x) for x in shape.split("x"))
        mask, n_used = step_mask(n_tokens, n_kv)
        for spec in types.split(","):
            k, _, v = spec.partition("/")
            t = parse_cache_types(k, v or k)
            caches = Caches(backend, t, hp.n_layer, hp.n_embd_kv, n_kv + 256)
            label = t.k if t.k == t.v else f"{t.k}/{t.v}"
            try:
                yield Case(
                    backend, hp, caches, n_tokens, n_kv, mask, f"{n_tokens} x {n_kv} ({n_used} used)", label
                )
            finally:
                caches.close()


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path (its attention shapes)"),
    shapes: str = typer.Option(
        "1x256,1x1280,1x4352,16x1280,512x512,512x1536", help="TOKENSxSLOTS, comma separated"
    ),
    types: str = typer.Option("f16,q8_0,q4_0,q8_0/f16", help="K/V types (K or K/V), comma separated"),
    paths: str = typer.Option(",".join(PATHS), help="paths to time"),
    reps: int = typer.Option(5, help="rounds; the best of each path is kept"),
):
    console = Console()
    hp = model_hparams(model, console.print)
    wanted = [p for p in paths.split(",") if p != KERNEL or attention_kernel() is not None]
    backend = Backend("cpu", n_threads=1)
    lines = []
    for case in cases(backend, hp, shapes, types):
        best = dict.fromkeys(wanted, float("inf"))
        for _ in range(reps):
            for path in wanted:
                loops = 10 if case.n_tokens == 1 else 1
                best[path] = min(best[path], case.time(path, loops))
        lines.append([case.shape_label, case.types_label, *(f"{1e3 * best[p]:.2f}" for p in wanted)])
        console.print(" | ".join(lines[-1]))
    backend.close()
    console.print(
        f"{hp.arch}, {hp.n_layer} layers, heads {hp.n_head}/{hp.n_head_kv} of {hp.head_dim}; ms per step, best of {reps}"
    )
    console.print(
        table(["queries x slots", "K/V", *(f"{p} ms" for p in wanted)], lines, align="ll" + "r" * len(wanted))
    )


if __name__ == "__main__":
    app()

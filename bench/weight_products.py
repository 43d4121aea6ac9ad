"""Q4_1 weight products: ggml_mul_mat against the engine's kernel (``ggml_ops/matmul_kernel.c``).

For each weight shape of a model's layer (random Q4_1 weights of that shape) and each number of
tokens, both graphs run in turn, round after round, and the best of each is kept; the outputs are
compared to the bit on the way. Prints a table of milliseconds and ratios.

    python -m indexmem.bench.weight_products --model smollm2-135m-instruct --tokens 16,512
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import typer
from rich.console import Console

from ..engine.attention import attention_kernel
from ..engine.registry import DEFAULT_MODEL
from ..ggml_ops.backend import Backend
from ..ggml_ops.bindings import C
from ..ggml_ops.graph import Graph, new_context
from ..ggml_ops.matmul import weight_product
from ..ggml_ops.structs import GGMLType
from ..markdown import table
from .attention_paths import model_hparams

app = typer.Typer(add_completion=False, help=__doc__)


def layer_shapes(hp) -> dict[str, tuple[int, int]]:
    """(K, N) of each weight of a layer: rows of K values, N rows."""
    return {
        "attn_q / attn_output": (hp.n_embd, hp.head_dim * hp.n_head),
        "attn_k / attn_v": (hp.n_embd, hp.n_embd_kv),
        "ffn_gate / ffn_up": (hp.n_embd, hp.n_ff),
        "ffn_down": (hp.n_ff, hp.n_embd),
    }


def random_q4_1_weight(backend, k: int, n: int, rng):
    """(context, tensor, buffer): a random [n, k] Q4_1 weight in ``backend``'s memory; free the
    buffer, then the context."""
    values = rng.standard_normal((n, k)).astype(np.float32)
    data = np.ascontiguousarray(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_1))
    ctx = new_context(1)
    w = C.ggml_new_tensor_2d(ctx, GGMLType.Q4_1, k, n)
    buf = backend.alloc_ctx_tensors(ctx)
    C.ggml_backend_tensor_set(w, data.ctypes.data, 0, data.nbytes)
    return ctx, w, buf


def time_both(backends, kernel, k: int, n: int, tokens: int, rounds: int, rng) -> tuple[float, float]:
    """Best seconds of ggml_mul_mat and of the kernel for a [n, k] Q4_1 weight times ``tokens``.
    Each graph has a scheduler of its own (``backends``, two CPU backends), so both stay placed:
    placing one graph frees the buffer another was placed in, and that graph is then unusable."""
    seed = int(rng.integers(1 << 31))  # the same weight, once in each backend's memory
    placed = [random_q4_1_weight(backend, k, n, np.random.default_rng(seed)) for backend in backends]
    ws = [w for _, w, _ in placed]
    graphs = []
    try:
        x = rng.standard_normal((tokens, k)).astype(np.float32)
        for which, backend, w in zip((None, kernel), backends, ws):
            g = Graph(64)
            out = g.output(weight_product(g.ctx, w, g.input("x", GGMLType.F32, k, tokens), which))
            backend.alloc_graph(g.gf)
            graphs.append((g, out))
        best, outputs = [float("inf")] * 2, []
        for _ in range(rounds):
            for i, ((g, out), backend) in enumerate(zip(graphs, backends)):
                g.set_input("x", x)  # a compute may reuse an input's memory once it is read
                start = time.perf_counter()
                backend.compute(g.gf)
                best[i] = min(best[i], time.perf_counter() - start)
                outputs.append(g.read(out))
        if not all(np.array_equal(outputs[0], o) for o in outputs[1:]):
            raise AssertionError(f"the kernel's product differs from ggml's for [{n}, {k}] x {tokens}")
        return best[0], best[1]
    finally:
        for g, _ in graphs:
            g.close()
        for ctx, _, buf in placed:
            C.ggml_backend_buffer_free(buf)
            C.ggml_free(ctx)


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path (its layer shapes)"),
    tokens: str = typer.Option("16,512", help="tokens per product, comma separated"),
    rounds: int = typer.Option(15, help="rounds, both in turn; the best of each is kept"),
    threads: int = typer.Option(1, help="threads"),
):
    console = Console()
    kernel = attention_kernel()
    if kernel is None or not kernel.supports_mul_mat(GGMLType.Q4_1, 32):
        raise typer.BadParameter("this machine has no AVX2 build of the kernels: nothing to compare")
    hp = model_hparams(model, console.print)
    backends, rng, rows = [Backend("cpu", n_threads=threads) for _ in range(2)], np.random.default_rng(0), []
    try:
        for name, (k, n) in layer_shapes(hp).items():
            for t in (int(v) for v in tokens.split(",")):
                ggml_s, ours_s = time_both(backends, kernel, k, n, t, rounds, rng)
                rows.append(
                    [
                        name,
                        f"{k}→{n}",
                        f"{t}",
                        f"{ggml_s * 1e3:.3f}",
                        f"{ours_s * 1e3:.3f}",
                        f"{ggml_s / ours_s:.2f}x",
                    ]
                )
    finally:
        for backend in backends:
            backend.close()
    console.print(
        f"{model}, Q4_1 weights, {threads} thread(s), best of {rounds} rounds; outputs equal to the bit"
    )
    console.print(table(["weight", "shape", "tokens", "ggml ms", "kernel ms", "speed-up"], rows))


if __name__ == "__main__":
    app()

"""Two versions of the CPU kernels' sources timed against each other on one model's attention
shapes, interleaved in one process: each round times the base build, then the working tree's, and
the best of every build is kept, so a machine whose speed comes and goes slows both alike. The
figures behind changes to ``ggml_ops/attention_kernel.c``.

    python -m indexmem.bench.kernel_ab --base 7d76fc7 --shapes 1x1280,1x4352,512x1536 --types f16,q8_0

Sources missing at the base revision (a kernel file added since) are taken from the working tree.
The builds are loaded without ``open_kernel``'s ABI check: both come from this repository.
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from ..engine import attention
from ..engine.registry import DEFAULT_MODEL
from ..ggml_ops.backend import Backend
from ..ggml_ops.kernel import HEADERS, HERE, SOURCES, Kernel, build_kernel
from ..markdown import table
from .attention_paths import cases, model_hparams

app = typer.Typer(add_completion=False, help=__doc__)


def sources_at(revision: str, into: Path) -> Path:
    """The kernels' sources as they were at git ``revision``, written into ``into``."""
    repo = HERE.parent
    for f in SOURCES + HEADERS:
        shown = subprocess.run(
            ["git", "show", f"{revision}:{f.relative_to(repo).as_posix()}"], cwd=repo, capture_output=True
        )
        (into / f.name).write_bytes(shown.stdout if shown.returncode == 0 else f.read_bytes())
    return into


def load_build(source_dir: Path, cache: Path) -> Kernel:
    path = build_kernel(cache, source_dir=source_dir)
    return Kernel(ctypes.CDLL(str(path)), path)


@app.command()
def main(
    base: str = typer.Option(..., help="git revision of the sources to compare against"),
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path (its attention shapes)"),
    shapes: str = typer.Option("1x1280,1x4352", help="TOKENSxSLOTS, comma separated"),
    types: str = typer.Option("f16,q8_0", help="K/V types (K or K/V), comma separated"),
    rounds: int = typer.Option(30, help="rounds, builds in turn; the best of each is kept"),
):
    console = Console()
    hp = model_hparams(model, console.print)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        base_dir.mkdir()
        builds = {
            base: load_build(sources_at(base, base_dir), Path(tmp) / "cache"),
            "working tree": load_build(HERE, Path(tmp) / "cache"),
        }
        backend = Backend("cpu", n_threads=1)
        lines, own = [], attention.attention_kernel
        try:
            for case in cases(backend, hp, shapes, types):
                loops = 3 if case.n_tokens == 1 else 1
                best = dict.fromkeys(builds, float("inf"))
                for _ in range(rounds):
                    for name, kernel in builds.items():
                        attention.attention_kernel = lambda kernel=kernel: kernel  # what attend() builds with
                        best[name] = min(best[name], case.time(attention.KERNEL, loops))
                a, b = best.values()
                lines.append(
                    [case.shape_label, case.types_label, f"{1e3 * a:.2f}", f"{1e3 * b:.2f}", f"{b / a:.2f}"]
                )
                console.print(" | ".join(lines[-1]))
        finally:
            attention.attention_kernel = own
            backend.close()
    console.print(
        f"{hp.arch}, {hp.n_layer} layers, heads {hp.n_head}/{hp.n_head_kv} of {hp.head_dim}; ms per step, best of {rounds}"
    )
    console.print(
        table(["queries x slots", "K/V", f"{base} ms", "working tree ms", "ratio"], lines, align="llrrr")
    )


if __name__ == "__main__":
    app()

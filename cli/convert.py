"""indexmem-convert: a trained IndexMem checkpoint → GGUF (sidecar, or merged into the model);
`indexmem-convert inspect FILE` prints what a GGUF file holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import clean_errors

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)


@app.callback()
def _commands():
    """GGUF tools."""


@app.command()
@clean_errors
def inspect(file: Path, all_tensors: bool = typer.Option(False, "--all", help="list every tensor")):
    """Metadata and tensor table of a GGUF file."""
    from ..convert.describe import describe

    info = describe(file)
    console = Console()
    meta = Table(title=f"{file} (GGUF v{info['version']}, {info['n_tensors']} tensors)")
    meta.add_column("key")
    meta.add_column("value")
    for key, value in info["metadata"].items():
        meta.add_row(key, value)
    console.print(meta)
    tensors = Table(title="tensors")
    for col in ("name", "type", "shape", "bytes"):
        tensors.add_column(col)
    rows = info["tensors"] if all_tensors else info["tensors"][:12]
    for t in rows:
        tensors.add_row(t["name"], t["type"], str(t["shape"]), f"{t['nbytes']:,}")
    console.print(tensors)
    if len(rows) < len(info["tensors"]):
        console.print(f"... {len(info['tensors']) - len(rows)} more (--all lists them)")


convert_app = typer.Typer(add_completion=False, help=__doc__)


@convert_app.command()
@clean_errors
def convert(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder (weights.safetensors + config.json)"),
    base: Path = typer.Option(..., "--base", help="the model GGUF the checkpoint was trained on"),
    out: Path = typer.Option(..., "-o", "--out", help="output GGUF"),
    merge: bool = typer.Option(False, "--merge", help="write a complete model GGUF with the modules added"),
    dtype: str = typer.Option("f32", help="matrices as f32, f16 or q8_0 (vectors stay f32)"),
    pool_kernel: int = typer.Option(
        None,
        help="store this odd max-pool width over the indexer's scores as the "
        "engine's default (not given: no pooling)",
    ),
):
    """Convert CHECKPOINT for the model BASE into OUT."""
    from ..convert.writer import convert as run

    path = run(checkpoint, base, out, merge=merge, dtype=dtype, progress=True, pool_kernel=pool_kernel)
    Console(stderr=True).print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main():
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "inspect":
        app()
    else:
        convert_app()


if __name__ == "__main__":
    main()

"""indexmem-convert: GGUF tools. `inspect` prints what a GGUF file holds."""

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
    from ..convert.inspect import describe

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


def main():
    app()


if __name__ == "__main__":
    main()

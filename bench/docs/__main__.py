"""Write every generated table, figure and plot of README.md and docs/ from the committed result
files (docs/results/, checkpoints/*/eval_*.json), or with --check say which files disagree.

    python -m indexmem.bench.docs            # from the repository root
    python -m indexmem.bench.docs --check    # exit status 1 if a document or plot is stale
"""

from __future__ import annotations

from pathlib import Path

import typer

from ...cli.common import clean_errors
from .generate import differences, generate, write

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@clean_errors
def main(
    check: bool = typer.Option(False, "--check", help="write nothing; exit 1 if a generated file is stale"),
    root: Path = typer.Option(Path("."), help="the repository checkout"),
    plots: bool = typer.Option(True, help="also draw the PNGs (--no-plots: documents and reports only)"),
):
    if not (root / "README.md").exists() or not (root / "docs" / "results").is_dir():
        typer.echo(f"{root.resolve()} is not an indexmem checkout (README.md and docs/results/)", err=True)
        raise typer.Exit(1)
    generated = generate(root, plots=plots)
    for entry in generated.skipped:
        typer.echo(f"not measured yet: {entry.file} ({entry.model}, {entry.bench})")
    if check:
        stale = differences(root, generated)
        for path in stale:
            typer.echo(f"stale: {path}")
        raise typer.Exit(1 if stale else 0)
    for path in write(root, generated):
        typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()

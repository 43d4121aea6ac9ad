"""matplotlib for the project's PNGs: the Agg backend, matplotlib's default style whatever the user's
matplotlibrc says, and files without the matplotlib version in their metadata, so a plot drawn
twice from the same result file is the same bytes (the docs generator checks them)."""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_path


def pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use("default")
    return plt


def save_png(fig, path: Path, dpi: int) -> None:
    """Write ``fig`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)

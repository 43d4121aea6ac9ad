"""PNG plots of RULER rows (matplotlib, Agg), written atomically: compression curves (score vs
eviction ratio, a line per configuration) and needle depth x length heatmaps."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ...plotting import pyplot, save_png
from .summary import (
    average,
    average_error,
    bin_label,
    config_label,
    config_of,
    depth_accuracy,
    depth_grid,
    evict_share,
    ordered_configs,
    task_scores,
)
from .tasks import TASKS

_DODGE = 0.008  # horizontal offset between configurations' markers, in eviction ratio
_DPI = 110
_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@dataclass(frozen=True)
class Curves:
    """What a compression-curve panel draws from a set of rows: per (spec, context) its points
    (mean eviction share, per-task scores), full KV's scores per context, and the tasks."""

    tasks: list[str]
    contexts: list[int]
    lines: dict
    full: dict


def curves(rows: list[dict]) -> Curves:
    scores = task_scores(rows)
    shares: dict = defaultdict(list)
    for r in rows:
        shares[(config_of(r), r["context"])].append(evict_share(r))
    lines: dict = defaultdict(list)  # (spec, context) -> [(x, {task: TaskScore})]
    for (config, ctx), s in scores.items():
        if config[0] != "full":
            lines[(config[0], ctx)].append((sum(shares[(config, ctx)]) / len(shares[(config, ctx)]), s))
    return Curves(
        tasks=[t for t in TASKS if any(r["task"] == t for r in rows)],
        contexts=sorted({ctx for _, ctx in scores}),
        lines=dict(lines),
        full={ctx: s for (config, ctx), s in scores.items() if config[0] == "full"},
    )


def _y_of(c: Curves, s: dict, panel: str) -> tuple[float | None, float | None]:
    """The panel's score and its standard error (drawn on the average panel only)."""
    if panel == "average":
        return average(s, c.tasks), average_error(s, c.tasks)
    return (s[panel].mean, None) if panel in s else (None, None)


def draw_panel(ax, c: Curves, panel: str, specs: list[str]) -> None:
    """One panel ("average" or a task): a line per configuration (and context), each starting at
    full KV's star; ``specs`` fixes every configuration's colour and marker across panels."""
    for (spec, ctx), points in sorted(c.lines.items()):
        pts = sorted(points, key=lambda p: p[0])
        if ctx in c.full:
            pts = [(0.0, c.full[ctx])] + pts
        k = specs.index(spec)
        dodge = _DODGE * (k - (len(specs) - 1) / 2)  # lines with equal scores stay visible side by side
        xye = [(x + dodge * (x > 0), *_y_of(c, s, panel)) for x, s in pts]
        xye = [(x, 100 * y, 100 * (e or 0.0)) for x, y, e in xye if y is not None]
        if xye:
            x, y, e = zip(*xye)
            ax.errorbar(
                x,
                y,
                yerr=e if any(e) else None,
                marker=_MARKERS[k % len(_MARKERS)],
                ms=3.5,
                lw=1.1,
                elinewidth=0.7,
                capsize=1.5,
                alpha=0.85,
                ls=_STYLES[c.contexts.index(ctx) % len(_STYLES)],
                color=f"C{k % 10}",
                label=spec if len(c.contexts) == 1 else f"{spec}, {ctx:,}",
            )
    for ctx in c.contexts:
        if ctx in c.full and _y_of(c, c.full[ctx], panel)[0] is not None:
            ax.plot([0.0], [100 * _y_of(c, c.full[ctx], panel)[0]], "k*", ms=7)
    if panel == "average":
        ax.set_ylim(bottom=-1)  # averages sit low: let the axis fit them and their error bars
    else:
        ax.set_ylim(-3, 103)
    ax.set_xlim(-0.03, 1.0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _specs(*all_curves: Curves) -> list[str]:
    return sorted({spec for c in all_curves for spec, _ in c.lines})


def compression_curves(rows: list[dict], path: Path, title: str) -> None:
    """Score against eviction ratio, one line per configuration (and context length when there are
    several), one panel for the average over tasks and one per task. Every line starts at full KV."""
    plt = pyplot()
    c = curves(rows)
    panels = (["average"] if len(c.tasks) > 1 else []) + c.tasks
    ncols = min(5, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 2.5 * nrows + 0.6), squeeze=False, sharex=True
    )
    specs = _specs(c)
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, c, panel, specs)
        ax.set_title(panel if panel == "average" else f"{panel} ({TASKS[panel].short})", fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("eviction ratio", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("score", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=min(4, len(labels)))
    fig.suptitle(
        title + " (star: full KV; bars on the average: ± its standard error)", fontsize=10, x=0.01, ha="left"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97 - 0.02 * (nrows == 1)))
    save_png(fig, path, _DPI)


def average_panels(named_rows: list[tuple[str, list[dict]]], path: Path, title: str) -> None:
    """The average panel of ``compression_curves`` for several result sets side by side (say one
    per model), each configuration in the same colour in every panel."""
    plt = pyplot()
    all_curves = [(name, curves(rows)) for name, rows in named_rows]
    specs = _specs(*(c for _, c in all_curves))
    fig, axes = plt.subplots(1, len(all_curves), figsize=(4.6 * len(all_curves), 3.4), squeeze=False)
    for ax, (name, c) in zip(axes[0], all_curves):
        draw_panel(ax, c, "average", specs)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("eviction ratio", fontsize=8)
    axes[0][0].set_ylabel("average score", fontsize=8)
    seen: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", fontsize=8, ncol=min(7, len(seen)))
    fig.suptitle(title + " (star: full KV; bars: ± standard error)", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    save_png(fig, path, _DPI)


def depth_heatmaps(rows: list[dict], path: Path, title: str) -> None:
    """Needle accuracy by depth (rows) and context length (columns), one panel per configuration."""
    plt = pyplot()
    bins, contexts, cells = depth_grid(rows)
    if not bins:
        raise ValueError("no needle rows with a depth to plot")
    configs = ordered_configs(cells)
    fig, axes = plt.subplots(
        1,
        len(configs),
        figsize=(1.2 + 0.9 * len(contexts) * len(configs) + 0.6 * len(configs), 3.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax, config in zip(axes[0], configs):
        grid = [[depth_accuracy(cells[config].get((b, c))) for c in contexts] for b in bins]
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}".rstrip("0").rstrip(".") if v not in (0, 1) else f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                    )
        ax.set_xticks(
            range(len(contexts)), [f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in contexts], fontsize=8
        )
        ax.set_yticks(range(len(bins)), [bin_label(b) for b in bins], fontsize=8)
        ax.set_title(config_label(config), fontsize=9)
        ax.set_xlabel("context tokens", fontsize=8)
    axes[0][0].set_ylabel("needle depth", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.02, label="accuracy")
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    save_png(fig, path, _DPI)

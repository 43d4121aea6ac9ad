"""Every generated block, plot and report of the documentation, from the committed result files:
written in place, or compared with what is committed."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...atomic import write_atomic
from ...engine.registry import MODELS
from ..speed_results import read_speed
from .blocks import fill, insert_under, names
from .catalog import HEADLINE_PLOT, RESULTS, Result
from .headline import headline, headline_plot
from .sections import Section, render
from .supported import models_table

README = "README.md"


@dataclass
class Generated:
    files: dict[str, bytes]  # repository path -> its generated content
    skipped: list[Result]  # listed files not measured yet (missing, or no complete sample)


def _headline_models(
    root: Path, sections: dict[Result, Section]
) -> list[tuple[str, list[dict], dict | None]]:
    models = []
    for name in MODELS:
        ruler = next((e for e in sections if e.model == name and e.headline and e.bench == "ruler"), None)
        if ruler is None:
            continue
        longest = max(r["context"] for r in sections[ruler].rows)
        rows = [r for r in sections[ruler].rows if r["context"] == longest]
        speed = next((e for e in sections if e.model == name and e.headline and e.bench == "speed"), None)
        models.append((name, rows, read_speed(root / speed.file) if speed else None))
    return models


def _documents(root: Path) -> list[str]:
    return [README] + sorted(str(p.relative_to(root)) for p in (root / "docs").glob("*.md"))


def _document(root: Path, doc: str, blocks: dict[str, str], entries: list[Result]) -> str:
    """The document with every block filled; a listed result without its block gets one at the
    end of its section."""
    text = (root / doc).read_text() if (root / doc).exists() else ""
    present = set(names(text))
    for entry in entries:
        if entry.block not in present:
            text = insert_under(text, entry.heading, entry.block, blocks[entry.block])
    return fill(text, blocks)


def generate(root: Path, plots: bool = True) -> Generated:
    """What every generated file should hold (``plots=False``: every file but the PNGs)."""
    sections, skipped = {}, []
    for entry in RESULTS:
        section = render(entry, root)
        if section is None:
            skipped.append(entry)
        else:
            sections[entry] = section
    bodies: dict[str, dict[str, str]] = {doc: {} for doc in _documents(root)}
    writers = {}
    for entry, section in sections.items():
        bodies.setdefault(entry.doc, {})[entry.block] = section.text
        writers.update(section.outputs)
    models = _headline_models(root, sections)
    bodies[README]["headline"] = headline(models)
    bodies[README]["models"] = models_table()
    if models:
        writers[HEADLINE_PLOT] = lambda path: headline_plot(models, path)

    missing = {"headline", "models"} - set(names((root / README).read_text()))
    if missing:
        raise ValueError(f"{README} has no generated block named {', '.join(sorted(missing))}")
    files = {}
    for doc, blocks in bodies.items():
        try:
            files[doc] = _document(root, doc, blocks, [e for e in sections if e.doc == doc]).encode()
        except ValueError as exc:
            raise ValueError(f"{doc}: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        for path, write in writers.items():
            if plots or not path.endswith(".png"):
                out = Path(tmp) / path.replace("/", "_")
                write(out)
                files[path] = out.read_bytes()
    return Generated(files, skipped)


def differences(root: Path, generated: Generated) -> list[str]:
    """The files whose committed content is not what the results give."""
    return [
        path
        for path, data in generated.files.items()
        if not (root / path).exists() or (root / path).read_bytes() != data
    ]


def write(root: Path, generated: Generated) -> list[str]:
    """Write the files that differ; returns them."""
    changed = differences(root, generated)
    for path in changed:
        write_atomic(root / path, generated.files[path])
    return changed

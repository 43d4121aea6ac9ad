"""README's table of the registry models, from the registry itself."""

from __future__ import annotations

from ...engine.registry import MODELS
from ...markdown import table


def models_table() -> str:
    rows = [
        [
            f"`{m.name}`",
            m.description,
            "shipped" if m.sidecar else "none yet",
            ("on" if m.memory else "off (`memory=True`)") if m.sidecar else "–",
        ]
        for m in MODELS.values()
    ]
    return table(["name", "model", "IndexMem sidecar", "latent memory"], rows, align="llll")

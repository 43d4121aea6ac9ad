"""README's table of the registry models, from the registry itself."""

from __future__ import annotations

from ...convert.reader import memory_layers
from ...engine.indexmem import SIDECAR_DIR
from ...engine.registry import MODELS, RegistryModel
from ...markdown import table


def _memory(m: RegistryModel) -> str:
    if not m.sidecar:
        return "–"
    if not memory_layers(SIDECAR_DIR / m.sidecar):
        return "none in the sidecar"
    return "on" if m.memory else "off (`memory=True`)"


def models_table() -> str:
    rows = [
        [f"`{m.name}`", m.description, "shipped" if m.sidecar else "none yet", _memory(m)]
        for m in MODELS.values()
    ]
    return table(["name", "model", "IndexMem sidecar", "latent memory"], rows, align="llll")

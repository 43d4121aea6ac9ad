"""README's table of the registry models, from the registry itself."""

from __future__ import annotations

from ...convert import schema as S
from ...engine.indexmem import SIDECAR_DIR
from ...engine.loader import open_gguf
from ...engine.registry import MODELS, RegistryModel
from ...markdown import table


def _memory(m: RegistryModel) -> str:
    if not m.sidecar:
        return "–"
    with open_gguf(SIDECAR_DIR / m.sidecar) as g:
        shut = bool(g.get(S.K_MEM_SHUT))
    return "none in the sidecar" if shut else "on" if m.memory else "off (`memory=True`)"


def models_table() -> str:
    rows = [
        [f"`{m.name}`", m.description, "shipped" if m.sidecar else "none yet", _memory(m)]
        for m in MODELS.values()
    ]
    return table(["name", "model", "IndexMem sidecar", "latent memory"], rows, align="llll")

"""Describe a GGUF file (metadata and tensors) as plain data."""

from __future__ import annotations

from pathlib import Path

from ..engine.loader import open_gguf

_MAX_VALUE_CHARS = 80


def _short(value) -> str:
    if isinstance(value, list) or hasattr(value, "dtype"):
        items = list(value[:4])
        more = f", … ({len(value)} items)" if len(value) > 4 else ""
        return "[" + ", ".join(map(str, items)) + more + "]"
    text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "…"


def describe(path: str | Path) -> dict:
    with open_gguf(path) as gguf:
        return {
            "version": gguf.version,
            "n_tensors": len(gguf.tensors),
            "metadata": {key: _short(gguf.get(key)) for key in gguf.keys()},
            "tensors": [
                dict(name=t.name, type=t.type_name, shape=list(t.shape), nbytes=t.nbytes)
                for t in gguf.tensors.values()
            ],
        }

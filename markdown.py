"""A markdown table from a header and rows of cells."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """``align``: one letter per column, ``l`` or ``r`` (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError("every row needs a cell per column, and every column an alignment")
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return "\n".join(["| " + " | ".join(headers) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])

"""Generated blocks in a markdown document: the text between

    <!-- generated: NAME (python -m indexmem.bench.docs; do not edit) -->
    <!-- end generated: NAME -->

belongs to the generator; everything else is written by hand."""

from __future__ import annotations

import re

COMMAND = "python -m indexmem.bench.docs"
_BLOCK = re.compile(
    r"^<!-- generated: (?P<name>\S+) \(.*?\) -->\n(?P<body>.*?)^<!-- end generated: (?P=name) -->$",
    re.S | re.M,
)
_ANY_MARKER = re.compile(r"^<!-- (?:end )?generated: ", re.M)


def begin(name: str) -> str:
    return f"<!-- generated: {name} ({COMMAND}; do not edit) -->"


def end(name: str) -> str:
    return f"<!-- end generated: {name} -->"


def block(name: str, body: str) -> str:
    return f"{begin(name)}\n{body.strip()}\n{end(name)}"


def names(text: str) -> list[str]:
    """The blocks in ``text``, in order; a marker without its pair is an error."""
    found = [m["name"] for m in _BLOCK.finditer(text)]
    if len(_ANY_MARKER.findall(text)) != 2 * len(found):
        raise ValueError("a generated-block marker has no partner (or the pair is malformed)")
    if len(set(found)) != len(found):
        raise ValueError(f"a generated block appears twice: {sorted(n for n in found if found.count(n) > 1)}")
    return found


def fill(text: str, bodies: dict[str, str]) -> str:
    """``text`` with every block's body replaced by ``bodies[name]``; a block with no body given is
    stale (its result is no longer listed) and an error."""
    stale = [n for n in names(text) if n not in bodies]
    if stale:
        raise ValueError(f"generated blocks without a result to fill them: {', '.join(stale)}")
    return _BLOCK.sub(lambda m: block(m["name"], bodies[m["name"]]), text)


def _headings(lines: list[str]) -> dict[int, tuple[int, str]]:
    """Line index -> (level, title) of every markdown heading outside code fences."""
    found, fenced = {}, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.fullmatch(r"(#+) (.+)", line)):
            found[i] = (len(m[1]), m[2])
    return found


def insert_under(text: str, heading: str, name: str, body: str) -> str:
    """``text`` with a new block at the end of the section under ``heading`` (a markdown heading of
    any level whose title is ``heading``), or under a new ``## heading`` at the end."""
    lines = text.rstrip("\n").split("\n")
    headings = _headings(lines)
    found = next((i for i, (_, title) in headings.items() if title == heading), None)
    if found is None:
        lines += ["", f"## {heading}"]
        stop = len(lines)
    else:
        level = headings[found][0]
        stop = next((i for i, (lv, _) in headings.items() if i > found and lv <= level), len(lines))
        while not lines[stop - 1].strip():
            stop -= 1
    return "\n".join(lines[:stop] + ["", block(name, body), ""] + lines[stop:]).rstrip("\n") + "\n"

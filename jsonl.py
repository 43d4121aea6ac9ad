"""Result files of one JSON object per line, appended to by runs that may be killed or run
side by side."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path


def read_rows(path: Path | None) -> list[dict]:
    """Rows of a JSONL result file (none if it does not exist); a torn last line is skipped."""
    if path is None or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_row(out: Path, row: dict) -> None:
    """One line per row, synced: a run killed mid-write leaves at most a torn last line, which the
    reader skips and the next append starts after. The lock lets shards share the file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def sole_writer(out: Path, part: str):
    """Held while a run measures and appends its ``part`` (a shard) of ``out``. Shards share the
    file, but two runs of the same part would measure the same rows and both append them: the
    second is refused at once."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.{part.replace('/', 'of').replace(' ', '-')}.lock")
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another run is measuring {part} of {out}; wait for it, or give this one another --shard or --out"
            ) from None
        yield

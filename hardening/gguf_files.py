"""Turn a mutated GGUF header into a file on disk, keeping the tensor data where it belongs.

Two ways, same result: :class:`RebuiltGGUF` writes header + padding + the original data anew for
every case (small files: sidecars, tiny models); :class:`PatchedGGUF` keeps one working copy of
a big model and overwrites its first bytes in place, restoring them after the case, so a 100 MB
model is never copied per case. When a mutation changes the header's size, a free-text string
(``general.name`` and the like) is padded or shortened so the data section starts where it did;
if none can absorb the change, the data section shifts, as it would in a file edited carelessly.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .gguf_layout import STRING, align, encode_kv, parse_layout
from .mutate_gguf import Base, Mutation

HEADER_READ_LIMIT = 64 << 20
FILLER_KEYS = (
    "general.name",
    "general.basename",
    "general.finetune",
    "general.organization",
    "general.license",
    "general.size_label",
    "indexmem.base.sha256",
)


def load_base(path: Path) -> Base:
    with open(path, "rb") as f:
        head = f.read(HEADER_READ_LIMIT)
    layout = parse_layout(head)
    return Base(layout=layout, header=head[: layout.header_end], file_size=os.path.getsize(path))


def fit_header(base: Base, header: bytes) -> bytes:
    """``header`` resized (through a free-text string) so it pads to the original data offset."""
    lay = base.layout
    lo, hi = lay.data_offset - lay.alignment + 1, lay.data_offset  # lengths that pad to data_offset
    if lo <= len(header) <= hi:
        return header
    for kv in lay.kvs:
        if kv.key not in FILLER_KEYS or kv.vtype != STRING:
            continue
        old = base.header[kv.start : kv.end]
        if header.count(old) != 1:
            continue  # the mutation touched it
        value = old[len(encode_kv(kv.key, STRING, "")) :]
        delta = (lo - len(header)) if len(header) < lo else (hi - len(header))
        if len(value) + delta < 0:
            continue
        new_value = value + b" " * delta if delta > 0 else value[: len(value) + delta]
        return header.replace(old, encode_kv(kv.key, STRING, new_value))
    return header


def padded(header: bytes, alignment: int) -> bytes:
    return header + b"\0" * (align(len(header), alignment) - len(header))


class RebuiltGGUF:
    """Each case written whole: mutated header, padding, the original tensor data."""

    def __init__(self, source: Path, work_dir: Path):
        self.source, self.base = Path(source), load_base(Path(source))
        self.path = Path(work_dir) / f"case-{self.source.name}"
        with open(self.source, "rb") as f:
            f.seek(self.base.layout.data_offset)
            self.data = f.read()

    def contents(self, mutation: Mutation) -> bytes:
        data = padded(mutation.header, self.base.layout.alignment) + self.data
        return data if mutation.truncate_at is None else data[: mutation.truncate_at]

    @contextmanager
    def apply(self, mutation: Mutation):
        self.path.write_bytes(self.contents(mutation))
        try:
            yield self.path
        finally:
            self.path.unlink(missing_ok=True)


class PatchedGGUF:
    """One working copy of a big file; each case overwrites its first bytes and restores them."""

    def __init__(self, source: Path, work_dir: Path):
        self.source, self.base = Path(source), load_base(Path(source))
        self.path = Path(work_dir) / f"work-{self.source.name}"
        self.truncated = Path(work_dir) / f"truncated-{self.source.name}"
        shutil.copyfile(self.source, self.path)

    def prefix(self, mutation: Mutation) -> bytes:
        """The bytes written at offset 0 of the working copy for ``mutation``."""
        header = fit_header(self.base, mutation.header)
        return padded(header, self.base.layout.alignment)

    @contextmanager
    def apply(self, mutation: Mutation):
        if mutation.truncate_at is not None:  # truncations keep the header: copy the prefix
            _copy_prefix(self.source, self.truncated, mutation.truncate_at)
            try:
                yield self.truncated
            finally:
                self.truncated.unlink(missing_ok=True)
            return
        prefix = self.prefix(mutation)
        with open(self.path, "r+b") as f:
            saved = f.read(len(prefix))
            f.seek(0)
            f.write(prefix)
        try:
            yield self.path
        finally:
            with open(self.path, "r+b") as f:
                f.write(saved)


def _copy_prefix(src: Path, dst: Path, n: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        left = n
        while left > 0:
            block = fin.read(min(left, 8 << 20))
            if not block:
                break
            fout.write(block)
            left -= len(block)


def gguf_file(source: Path, work_dir: Path, in_place: bool | None = None):
    """The right materializer for ``source``: in place for files over 16 MB unless told."""
    if in_place is None:
        in_place = os.path.getsize(source) > (16 << 20)
    return (PatchedGGUF if in_place else RebuiltGGUF)(source, work_dir)

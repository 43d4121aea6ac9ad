"""The recall tier's store: every token a layer evicts, kept outside the cache so the indexer can
bring it back when a later query needs it (issue 47).

Per layer, append-only: the token's RoPE position, its index key (d_idx float32: what the indexer
scores) and its K and V rows exactly as the cache held them (raw bytes of the cache's type). A
token taken back into the cache is marked taken; evicted again later, it is appended again.

``where="disk"``: the rows live in files of a temporary folder owned by the engine (removed when
it closes) and are read back in blocks of ``BLOCK`` entries with ``pread`` into fresh arrays, so
scoring a store of any size keeps the process's resident memory flat (pages read are the page
cache's, not the process's). ``where="ram"``: the same arrays in memory, growing with the store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

BLOCK = 2048  # entries scored per read: the scoring's temporaries are this many keys wide


def runs(ids: np.ndarray):
    """Runs of consecutive values in ``ids`` (any order): for each, the positions in ``ids`` of
    its values in increasing order, its first value and its length, so one copy moves a run."""
    order = np.argsort(ids, kind="stable")
    ordered = np.asarray(ids, dtype=np.int64)[order]
    breaks = (np.flatnonzero(np.diff(ordered) != 1) + 1).tolist()
    for lo, hi in zip([0, *breaks], [*breaks, len(ordered)]):
        if hi > lo:
            yield order[lo:hi], int(ordered[lo]), hi - lo


@dataclass
class _Columns:
    """One layer's entries in RAM (chunks appended as they come)."""

    positions: list[np.ndarray] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    k_rows: list[np.ndarray] = field(default_factory=list)
    v_rows: list[np.ndarray] = field(default_factory=list)


class RecallStore:
    def __init__(self, layers: list[int], d_idx: int, row_bytes: tuple[int, int], where: str = "disk"):
        """``row_bytes``: the bytes of a K row and of a V row (the cache's types may differ)."""
        if where not in ("disk", "ram"):
            raise ValueError(f"recall must be 'disk', 'ram' or None, got {where!r}")
        self.where, self.d_idx = where, d_idx
        self.k_row_bytes, self.v_row_bytes = row_bytes
        self.layers = list(layers)
        self.count = {il: 0 for il in self.layers}
        self._taken = {il: np.zeros(0, dtype=bool) for il in self.layers}  # grown by doubling
        self._n_taken = {il: 0 for il in self.layers}
        self.folder = tempfile.mkdtemp(prefix="indexmem-recall-") if where == "disk" else None
        self._ram = {il: _Columns() for il in self.layers} if where == "ram" else None
        self._files = {}
        if self.folder:
            for il in self.layers:
                for part in ("pos", "key", "k", "v"):
                    self._files[il, part] = open(os.path.join(self.folder, f"{il}.{part}"), "a+b")

    # --- sizes -------------------------------------------------------------------------
    def _entry_bytes(self) -> int:
        return 4 + 4 * self.d_idx + self.k_row_bytes + self.v_row_bytes

    @property
    def nbytes(self) -> int:
        return sum(self.count.values()) * self._entry_bytes()

    @property
    def disk_bytes(self) -> int:
        return self.nbytes if self.where == "disk" else 0

    @property
    def ram_bytes(self) -> int:
        return self.nbytes if self.where == "ram" else 0

    @property
    def taken(self) -> dict[int, np.ndarray]:
        """Per layer, whether each entry went back into the cache: [count] bool (views)."""
        return {il: self._taken[il][: self.count[il]] for il in self.layers}

    def live(self, il: int) -> int:
        return self.count[il] - self._n_taken[il]

    # --- writing -----------------------------------------------------------------------
    def append(
        self, il: int, positions: np.ndarray, keys: np.ndarray, k_rows: np.ndarray, v_rows: np.ndarray
    ):
        """Store evicted tokens: positions [n], index keys [n, d_idx] float32, K and V rows
        [n, K / V row bytes] uint8."""
        n = len(positions)
        if n == 0:
            return
        parts = {
            "pos": np.ascontiguousarray(positions, dtype=np.int32),
            "key": np.ascontiguousarray(keys, dtype=np.float32).reshape(n, self.d_idx),
            "k": np.ascontiguousarray(k_rows, dtype=np.uint8).reshape(n, self.k_row_bytes),
            "v": np.ascontiguousarray(v_rows, dtype=np.uint8).reshape(n, self.v_row_bytes),
        }
        if self._ram is not None:
            cols = self._ram[il]
            cols.positions.append(parts["pos"])
            cols.keys.append(parts["key"])
            cols.k_rows.append(parts["k"])
            cols.v_rows.append(parts["v"])
        else:
            for part, arr in parts.items():
                f = self._files[il, part]
                f.seek(0, os.SEEK_END)
                f.write(arr.tobytes())
                f.flush()
        flags = self._taken[il]
        if self.count[il] + n > len(flags):  # doubling: appends stay linear over a long conversation
            grown = np.zeros(max(2 * len(flags), self.count[il] + n, 1024), dtype=bool)
            grown[: self.count[il]] = flags[: self.count[il]]
            self._taken[il] = grown
        self.count[il] += n

    # --- reading -----------------------------------------------------------------------
    def _read(self, il: int, part: str, start: int, stop: int) -> np.ndarray:
        width = {"pos": 4, "key": 4 * self.d_idx, "k": self.k_row_bytes, "v": self.v_row_bytes}[part]
        dtype = {"pos": np.int32, "key": np.float32}.get(part, np.uint8)
        if self._ram is not None:
            cols = self._ram[il]
            chunks = {"pos": cols.positions, "key": cols.keys, "k": cols.k_rows, "v": cols.v_rows}[part]
            whole = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
            if len(chunks) > 1:  # keep one chunk, so the next read does not concatenate again
                chunks[:] = [whole]
            return whole[start:stop]
        raw = os.pread(self._files[il, part].fileno(), (stop - start) * width, start * width)
        arr = np.frombuffer(raw, dtype=dtype)
        return arr.reshape(stop - start, -1) if part != "pos" else arr

    def blocks(self, il: int, part: str = "key"):
        """(first entry, positions, rows, taken) of each block of the layer's entries; the rows
        are the index keys [n, d_idx] float32 (``part="key"``) or the K rows [n, K row bytes]
        (``part="k"``)."""
        width = self.d_idx if part == "key" else self.k_row_bytes
        for start in range(0, self.count[il], BLOCK):
            stop = min(start + BLOCK, self.count[il])
            yield (
                start,
                self._read(il, "pos", start, stop),
                self._read(il, part, start, stop).reshape(-1, width),
                self._taken[il][start:stop],
            )

    def take(self, il: int, entries: np.ndarray):
        """K rows, V rows [n, row bytes] and index keys [n, d_idx] of ``entries``, which leave
        the store (they go back into the cache)."""
        if len(entries) and int(np.max(entries)) >= self.count[il]:
            raise IndexError(f"layer {il}: store entry {int(np.max(entries))} was never written")
        out = []
        for part, width, dtype in (
            ("k", self.k_row_bytes, np.uint8),
            ("v", self.v_row_bytes, np.uint8),
            ("key", self.d_idx, np.float32),
        ):
            rows = np.zeros((len(entries), width), dtype=dtype)
            for where, first, n in runs(entries):  # one read per run of consecutive entries
                rows[where] = self._read(il, part, first, first + n).reshape(n, width)
            out.append(rows)
        self._n_taken[il] += int(np.count_nonzero(~self._taken[il][entries]))
        self._taken[il][entries] = True
        return tuple(out)

    # --- lifetime ----------------------------------------------------------------------
    def clear(self) -> None:
        for il in self.layers:
            self.count[il] = 0
            self._taken[il] = np.zeros(0, dtype=bool)
            self._n_taken[il] = 0
            if self._ram is not None:
                self._ram[il] = _Columns()
        for f in self._files.values():
            f.truncate(0)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

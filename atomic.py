"""Atomic file writes: write a temporary file next to the target, sync it, rename it over.

Readers see the old file or the new one, never a partial one; on any error (or an interrupt
raised as an exception) the temporary file is removed.

A process killed outright (SIGKILL, power loss, OOM killer) runs no cleanup, so its temporary
file stays. Temporary files are therefore named after their writer,
``<target>.<pid>-<host>-<random>.tmp``, and every atomic write of a target first removes the
temporaries of that target whose writer, on this host, no longer runs. (An anonymous O_TMPFILE
would vanish by itself, but it cannot replace an existing file atomically, and writers such as
gguf-py need a path to open.)
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(path.name) + r"\.(\d+)-([0-9a-f]{8})-[^.]+\.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` left by writers on this host that are no longer running."""
    path = Path(path)
    pattern = _temp_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    stale = []
    for name in names:
        m = pattern.fullmatch(name)
        if m and m.group(2) == _HOST and not _running(int(m.group(1))):
            stale.append(path.parent / name)
    return stale


def remove_stale_temps(path: str | os.PathLike) -> int:
    removed = 0
    for tmp in stale_temps(path):
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # another writer cleaned it first
    return removed


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (without this a power cut may undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write ``path`` through; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}-{_HOST}-", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it a normal file's mode
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a binary file object whose content replaces ``path`` on success."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            yield f


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)

"""The peak of a process's anonymous memory, sampled while it runs.

``ru_maxrss`` counts every resident page, the file-backed pages of memory-mapped files too: a
run that reads gigabytes of mapped features reports them though the kernel can drop them at any
time. What a machine must have free is the anonymous part (heap, tensors, arrays), which Linux
reports as ``RssAnon`` in ``/proc/self/status``; nothing records its peak, so a thread samples it.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")


def status_bytes(field: str, status: Path = STATUS) -> int | None:
    """A memory figure of a process's ``status`` file (``VmRSS``, ``RssAnon``, ...) in bytes; None
    where the file or the field is missing (not Linux, or an older kernel)."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    return None


def anon_bytes(status: Path = STATUS) -> int | None:
    """The process's resident anonymous memory now, in bytes (None where the system does not say)."""
    return status_bytes("RssAnon", status)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): freed tensors otherwise stay counted in the process's anonymous memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        trim(0)


class AnonPeak:
    """Samples :func:`anon_bytes` every ``interval`` seconds from a daemon thread while started;
    ``peak`` is the largest value seen (None where the system does not report it)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.peak = anon_bytes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int | None:
        now = anon_bytes()
        if now is not None:
            self.peak = max(self.peak or 0, now)
        return self.peak

    def restart(self) -> None:
        """Start a new peak from the memory now (one per stretch of work, e.g. a shard)."""
        self.peak = anon_bytes()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> AnonPeak:
        if self.peak is not None and self._thread is None:
            self._stop.clear()  # a second run of the same sampler samples again
            self._thread = threading.Thread(target=self._loop, name="anon-peak", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()

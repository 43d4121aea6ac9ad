"""A writer the interrupted-write tests kill: ``python interrupted_child.py WRITER ARGS...``.

Writers: ``convert CKPT BASE OUT [merge]``, ``session MODEL SIDECAR OUT [COUNT]`` (saves COUNT
sessions to OUT in a row), ``train FEATURES OUT STEPS``.

With ``KILL_AT=<n>:<bytes>`` the process SIGKILLs itself inside its n-th atomic write, once that
many bytes of the temporary file are written; ``KILL_AT=<n>:rename`` kills it after the write,
just before the rename. The sha256 the target had when that write began is written to
``KILL_RECORD`` first, so the test can check it is still what the file holds.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import itertools
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import indexmem.atomic as atomic


class KillingFile(io.FileIO):
    """A file that kills its process once ``limit`` bytes have been written to it."""

    def __init__(self, path, limit: int):
        super().__init__(path, "wb")
        self.limit, self.written = limit, 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        room = self.limit - self.written
        if len(data) >= room:
            super().write(data[:room])
            os.fsync(self.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        self.written += len(data)
        return super().write(data)


def install_kill_hook(spec: str, record: Path) -> None:
    index, point = spec.split(":")
    counter = itertools.count(1)
    original_path, original_open, original_replace = atomic.atomic_path, builtins.open, os.replace

    @contextmanager
    def hooked(path):
        if next(counter) != int(index):
            with original_path(path) as tmp:
                yield tmp
            return
        path = Path(path)
        record.write_text(hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent")
        with original_path(path) as tmp:
            if point == "rename":
                os.replace = lambda src, dst: (
                    os.kill(os.getpid(), signal.SIGKILL) if Path(src) == tmp else original_replace(src, dst)
                )
            else:

                def killing_open(file, mode="r", *args, **kwargs):
                    if "w" in mode and Path(os.fspath(file)) == tmp:
                        return KillingFile(file, int(point))
                    return original_open(file, mode, *args, **kwargs)

                builtins.open = killing_open
            yield tmp

    atomic.atomic_path = hooked


def main(writer: str, *args: str) -> None:
    if os.environ.get("KILL_AT"):
        install_kill_hook(os.environ["KILL_AT"], Path(os.environ["KILL_RECORD"]))
    if writer == "convert":
        from indexmem.convert.writer import convert

        convert(Path(args[0]), Path(args[1]), Path(args[2]), merge=len(args) > 3)
    elif writer == "session":
        from indexmem import Engine

        engine = Engine.load(
            args[0],
            indexmem=args[1],
            policy="indexmem",
            memory=True,
            budget=32,
            window=8,
            tau=4,
            n_batch=16,
            n_ctx=256,
        )
        for i in range(int(args[3]) if len(args) > 3 else 1):
            engine.logits([1] + [(37 * k + i) % 300 + 3 for k in range(60)])
            engine.save_session(args[2])
    elif writer == "train":
        from indexmem.train.fit import FitConfig, fit

        steps = int(args[2])
        fit(
            Path(args[0]),
            Path(args[1]),
            FitConfig(
                stage1_steps=steps // 2,
                stage2_steps=steps - steps // 2,
                warmup=1,
                decay_steps=1,
                layers_per_step=0,
                n_trail=16,
                block=32,
                checkpoint_every=1,
                seed=3,
            ),
        )
    else:
        raise SystemExit(f"unknown writer {writer}")


if __name__ == "__main__":
    main(*sys.argv[1:])

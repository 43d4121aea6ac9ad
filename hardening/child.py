"""The parent side: one long-lived worker process, restarted whenever a case kills or hangs it.

:meth:`Worker.run` sends one request and waits for its result line. If the worker dies first,
the case is a ``crash`` (with the signal and the tail of the worker's stderr); if no answer
comes within the timeout, the worker is killed and the case is a ``hang``.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

STDERR_TAIL = 1500
CAUSE = re.compile(r"GGML_ASSERT|GGML_ABORT|fatal error|terminate called|what\(\)|Assertion|error:")


class Worker:
    def __init__(self, log_path: Path, env: dict | None = None):
        self.log_path = Path(log_path)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._results = -1
        self._buffer = b""

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexmem.hardening.worker", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=self._log,
            pass_fds=(write_fd,),
            env=self.env,
            start_new_session=True,
        )  # a Ctrl-C in the terminal stops the parent, which then stops it
        os.close(write_fd)
        self._results, self._buffer = read_fd, b""

    def run(self, request: dict, timeout: float) -> dict:
        if self.proc is None:
            self._start()
        log_start = self.log_path.stat().st_size
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died already; _wait reports how
        result = self._wait(timeout)
        if result is None:
            self.close()
            self.restarts += 1
            return {
                "outcome": "hang",
                "message": f"no answer within {timeout:.0f} s",
                "stderr": self._stderr_since(log_start),
            }
        if "signal" in result or "exit_code" in result:
            self._close_pipes()
            self.restarts += 1
            sig = result.get("signal")
            what = f"killed by {_signal_name(sig)}" if sig else f"exited with code {result['exit_code']}"
            return {"outcome": "crash", "message": what, "stderr": self._stderr_since(log_start)}
        return result

    def _wait(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._results], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._results, 1 << 16)
            if not chunk:  # the worker closed its end: it is gone
                code = self.proc.wait()
                return {"signal": -code} if code < 0 else {"exit_code": code}
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _stderr_since(self, start: int) -> str:
        """What the case printed: the lines naming a failed check (GGML_ASSERT, abort, C++
        exception), which a backtrace would push out of the tail, then the tail."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
        causes = [line for line in text.splitlines() if CAUSE.search(line)][:5]
        return "\n".join(causes + ["..."] if causes else []) + text[-STDERR_TAIL:]

    def close(self) -> None:
        """Kill the worker (if running); a later run() starts a new one."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for closer in (self.proc.stdin.close, lambda: os.close(self._results), self._log.close):
            try:
                closer()
            except OSError:
                pass
        self.proc = None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""indexmem-serve in a child process on a free loopback port, for the server tests."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model, *options: str):
    """Yield (base URL, process) of a server on ``model`` started with ``options``."""
    port = free_port()
    cmd = [sys.executable, "-m", "indexmem.cli.serve", "--model", str(model), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.stdout.read().decode(errors='replace')[-3000:]}")
        time.sleep(0.3)
    try:
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)

"""Load indexmem-serve on loopback with concurrent clients, bounded in time and count, and print
what it held: every request answered, no server error but the queue's 503, RSS at the end within
5% of after warm-up, p50/p99 latency, tokens/s.

    python -m indexmem.bench.server_load --clients 32 --duration 300

starts its own server (``--model``, default the registry's default) on a free loopback port, or
loads one already running on this machine (``--port`` and ``--pid``). Each client loops over a
mix: whole and streamed replies, streams dropped after a few events, JSON mode (``json_object``
and ``json_schema``), malformed and oversized bodies. A 503 (queue full) waits a moment and goes
on. Exit status 1 if a criterion failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..train.peak_memory import status_bytes
from .load_requests import Client, Outcome

KINDS = {"whole": 4, "stream": 4, "stream-left": 1, "json": 3, "malformed": 1, "oversized": 1}
MAX_BODY = 64 << 10


def rss_bytes(pid: int) -> int:
    rss = status_bytes("VmRSS", Path(f"/proc/{pid}/status"))
    if rss is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return rss


def start_server(model: str, queue: int, max_tokens: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "indexmem.cli.serve", "--model", model, "--port", str(port)]
    cmd += [
        "--queue",
        str(queue),
        "--max-tokens",
        str(max(max_tokens, 160)),
        "--max-request-bytes",
        str(MAX_BODY),
    ]
    log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    log.seek(0)
    raise SystemExit(f"the server did not start: {log.read().decode(errors='replace')[-2000:]}")


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = defaultdict(Counter)  # kind -> status -> count
        self.failed = Counter()  # kind: note
        self.latency = []  # seconds of answered generations
        self.tokens = 0
        self.sent = 0

    def add(self, kind: str, outcome: Outcome, seconds: float) -> None:
        with self.lock:
            self.status[kind][outcome.status] += 1
            if not outcome.ok:
                self.failed[f"{kind}: {outcome.note or outcome.status}"] += 1
            if outcome.status == 200 and kind not in ("malformed", "oversized"):
                self.latency.append(seconds)
                self.tokens += outcome.tokens


def client_loop(client: Client, tally: Tally, rng: random.Random, stop_at: float, max_requests: int) -> None:
    kinds, weights = list(KINDS), list(KINDS.values())
    calls = {
        "whole": client.whole,
        "stream": client.stream,
        "stream-left": lambda i: client.stream(i, leave_after=3),
        "json": client.json_mode,
        "malformed": client.malformed,
        "oversized": client.oversized,
    }
    while time.monotonic() < stop_at:
        with tally.lock:
            if tally.sent >= max_requests:
                return
            tally.sent += 1
            i = tally.sent
        kind = rng.choices(kinds, weights)[0]
        t0 = time.monotonic()
        try:
            outcome = calls[kind](i)
        except (OSError, http.client.HTTPException) as exc:
            outcome = Outcome(0, ok=False, note=f"no answer ({type(exc).__name__})")
        tally.add(kind, outcome, time.monotonic() - t0)
        if outcome.status == 503:
            time.sleep(rng.uniform(0.2, 1.0))


def run(args) -> bool:
    proc = None
    if args.port is None:
        proc, port = start_server(args.model, args.queue, args.max_tokens)
        pid = proc.pid
    else:
        port, pid = args.port, args.pid
    try:
        client = Client(
            "127.0.0.1", port, timeout=args.timeout, max_tokens=args.max_tokens, max_body=MAX_BODY
        )
        for i in range(3):  # warm-up: graphs built, both JSON grammars checked once
            client.whole(i)
            client.json_mode(2 * i)
            client.json_mode(2 * i + 1)
        rss_warm = rss_bytes(pid)
        tally, start = Tally(), time.monotonic()
        stop_at = start + args.duration
        threads = [
            threading.Thread(
                target=client_loop,
                args=(client, tally, random.Random(k), stop_at, args.max_requests),
                daemon=True,
            )
            for k in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        time.sleep(1.0)  # let the server finish dropping cancelled work
        rss_end = rss_bytes(pid)
        return report(args, tally, wall, rss_warm, rss_end)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


def report(args, tally: Tally, wall: float, rss_warm: int, rss_end: int) -> bool:
    total = Counter()
    print(f"{args.clients} clients for {wall:.0f} s on 127.0.0.1: {tally.sent} requests")
    for kind in KINDS:
        counts = tally.status[kind]
        total.update(counts)
        print(f"  {kind:12s} " + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(counts.items())))
    server_errors = sum(n for s, n in total.items() if s >= 500 and s != 503)
    unanswered = total[0]
    lat = np.array(tally.latency) if tally.latency else np.zeros(1)
    drift = rss_end / rss_warm - 1
    print(
        f"  answered {sum(total.values()) - unanswered} of {sum(total.values())}; 503 (queue full): {total[503]}"
    )
    print(
        f"  server errors (5xx but 503): {server_errors}; replies not as promised: {sum(tally.failed.values())}"
    )
    for what, n in tally.failed.most_common():
        print(f"    {what}: {n}")
    print(
        f"  latency of answered generations: p50 {np.percentile(lat, 50):.2f} s, p99 {np.percentile(lat, 99):.2f} s"
    )
    print(f"  completion tokens: {tally.tokens} ({tally.tokens / wall:.1f} tok/s)")
    print(
        f"  server RSS: {rss_warm / 2**20:.1f} MiB after warm-up, {rss_end / 2**20:.1f} MiB at the end ({drift:+.1%})"
    )
    checks = {
        "no server errors": server_errors == 0,
        "every request answered": unanswered == 0,
        "replies as promised": not tally.failed,
        "RSS within 5%": abs(drift) <= 0.05,
    }
    print("  " + "; ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in checks.items()))
    if args.out:
        result = {
            "model": args.model,
            "clients": args.clients,
            "duration_s": args.duration,
            "wall_s": wall,
            "max_tokens": args.max_tokens,
            "queue": args.queue,
            "requests": sum(total.values()),
            "by_kind": {kind: {str(s): n for s, n in tally.status[kind].items()} for kind in KINDS},
            "unanswered": unanswered,
            "queue_full_503": total[503],
            "server_errors": server_errors,
            "failed": dict(tally.failed),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p99_s": float(np.percentile(lat, 99)),
            "completion_tokens": tally.tokens,
            "tok_s": tally.tokens / wall,
            "rss_warm_bytes": rss_warm,
            "rss_end_bytes": rss_end,
            "checks": checks,
        }
        write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    return all(checks.values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument(
        "--duration", type=float, default=300.0, help="seconds of load (clients start no request after)"
    )
    ap.add_argument(
        "--max-requests", type=int, default=100_000, help="requests at most, all clients together"
    )
    ap.add_argument("--max-tokens", type=int, default=48, help="max_tokens of each generation")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a client waits for an answer")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--queue", type=int, default=16, help="the started server's queue bound")
    ap.add_argument("--port", type=int, help="load a server already running on 127.0.0.1:PORT ...")
    ap.add_argument("--pid", type=int, help="... whose process id is PID (for its RSS)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if (args.port is None) != (args.pid is None):
        ap.error("--port and --pid go together")
    sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()

"""Peak resident memory of a long prompt with the recall tier's store on disk, against a short one.

    python -m indexmem.bench.recall_rss [--model smollm2-135m-instruct] [--lengths 4096,32768]
        [--out docs/results/recall-rss-smollm2.json]

Each length runs in a fresh process (so each peak is its own): the engine is loaded with the
indexmem policy, ``recall="disk"`` and a context as long as the prompt (no context shift empties
the store), the prompt (the GPL text Debian ships, repeated) is fed in
chunks, and the process reports its peak RSS, the engine's RAM-resident cache bytes and the bytes
the store holds on disk. The issue's check: the longest prompt's peak within 5% of the shortest's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from ..atomic import write_atomic


def text() -> str:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    return gpl.read_text() if gpl.exists() else " ".join(f"line {i} of a long text." for i in range(20000))


def measure_one(model: str, n_tokens: int, budget: int, threads: int) -> dict:
    from ..engine.api import Engine

    # positions up to the prompt's length, so no context shift empties the store on the way
    engine = Engine.load(
        model, n_threads=threads, n_ctx=n_tokens + 64, policy="indexmem", budget=budget, recall="disk"
    )
    body = engine.tokenize(text())
    tokens = (body * (n_tokens // len(body) + 1))[:n_tokens]
    engine.generate(tokens, max_tokens=8)
    stats = engine.stats()
    engine.close()
    return {
        "prompt_tokens": n_tokens,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ram_bytes": stats["ram_bytes"],
        "recall_store_bytes": stats["recall_store_bytes"],
        "recall_store_tokens": stats["recall_store_tokens"],
        "tokens_recalled": sum(stats["tokens_recalled"].values()),
        "position_shift": stats["position_shift"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", default="4096,32768")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: measure one length
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.model, args.one, args.budget, args.threads)))
        return {}
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        cmd = [
            sys.executable,
            "-m",
            "indexmem.bench.recall_rss",
            "--model",
            args.model,
            "--one",
            str(n),
            "--budget",
            str(args.budget),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(
            f"{n:>7,} tokens: peak RSS {rows[-1]['peak_rss_bytes'] / 2**20:.1f} MiB, store on disk "
            f"{rows[-1]['recall_store_bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
    result = {
        "model": args.model,
        "budget": args.budget,
        "threads": args.threads,
        "rows": rows,
        "growth": rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"] - 1,
    }
    print(f"peak RSS grows {100 * result['growth']:.1f}% from the shortest prompt to the longest")
    if args.out:
        write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()

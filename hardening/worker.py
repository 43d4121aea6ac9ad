"""The child side of the fuzz harness: loads one case after another and reports each outcome.

Requests arrive as JSON lines on stdin; each result is one JSON line on the file descriptor
given as the first argument (stdout and stderr belong to the C libraries' messages). A case
that kills this process (a signal) or never answers is recorded by the parent, which starts a
new worker. Outcomes: ``ok`` (loaded and used), ``error`` (an IndexmemError),
``other-exception`` (any other exception: a bug).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback

MEMORY_LIMIT = 6 << 30  # address space; a runaway allocation fails instead of exhausting the machine
PROMPT = [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100]


def _prompt(engine, n: int) -> list[int]:
    vocab = engine.hparams.n_vocab
    return [(PROMPT[i % len(PROMPT)] + 37 * i) % vocab for i in range(n)]


def load_gguf(req: dict, stage: dict) -> str:
    """A model file, loaded as a user would (default options), then a chat turn: template,
    tokenizer (with the file's special tokens), a few generated tokens, detokenized."""
    from indexmem import Engine

    engine = Engine.load(req["path"], n_threads=1)
    stage["stage"] = "use"
    try:
        engine.logits(_prompt(engine, 4))
        prompt = engine.chat_prompt([{"role": "user", "content": "hi"}])
        engine.generate(prompt, max_tokens=2)
    finally:
        engine.close()
    return "loaded"


def load_sidecar(req: dict, stage: dict) -> str:
    """An IndexMem sidecar with its model: read, paired, uploaded, then a prompt (that evicts
    when the request sets a small budget)."""
    from indexmem import Engine

    engine = Engine.load(req["model"], indexmem=req["path"], n_threads=1, **req.get("options", {}))
    stage["stage"] = "use"
    try:
        engine.logits(_prompt(engine, req.get("prompt", 48)))
    finally:
        engine.close()
    return "loaded"


class Engines:
    """Engines for session cases, kept across cases (loading one per case would dominate)."""

    def __init__(self):
        self._engines = {}

    def get(self, config: dict):
        from indexmem import Engine

        key = json.dumps(config, sort_keys=True)
        if key not in self._engines:
            self._engines[key] = Engine.load(config["model"], n_threads=1, **config.get("options", {}))
        return self._engines[key]


def make_session(req: dict, engines: Engines) -> dict:
    engine = engines.get(req["config"])
    engine.reset()
    history = _prompt(engine, req["prompt"])
    history += list(engine.generate_tokens(history, max_tokens=4, stop_at_eog=False))
    engine.save_session(req["path"])
    return {"history": history}


def load_session(req: dict, stage: dict, engines: Engines) -> str:
    """A session file restored into its engine, then the conversation continued."""
    engine = engines.get(req["config"])
    engine.load_session(req["path"])
    stage["stage"] = "use"
    follow = req["history"] + _prompt(engine, 3)
    list(engine.generate_tokens(follow, max_tokens=2, stop_at_eog=False))
    return "loaded"


def handle(req: dict, engines: Engines) -> dict:
    from indexmem.errors import IndexmemError

    op = req["op"]
    if op == "ping":
        return {"outcome": "ok", "message": "ready"}
    if op == "crash":  # for the harness's own tests
        os.kill(os.getpid(), signal.SIGSEGV)
    if op == "hang":
        time.sleep(3600)
    stage = {"stage": "load"}
    try:
        if op == "make_session":
            return {"outcome": "ok", **make_session(req, engines)}
        if op == "session":
            return {"outcome": "ok", "message": load_session(req, stage, engines)}
        return {"outcome": "ok", "message": {"gguf": load_gguf, "sidecar": load_sidecar}[op](req, stage)}
    except IndexmemError as exc:
        return {"outcome": "error", "stage": stage["stage"], "message": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return {
            "outcome": "other-exception",
            "stage": stage["stage"],
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=-8),
        }


def main() -> None:
    result_fd = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    engines = Engines()
    with os.fdopen(result_fd, "w", buffering=1) as out:
        for line in sys.stdin:
            t0 = time.perf_counter()
            result = handle(json.loads(line), engines)
            result["seconds"] = round(time.perf_counter() - t0, 3)
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

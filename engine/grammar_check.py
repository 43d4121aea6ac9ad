"""Check a GBNF grammar in a child process before llama.cpp sees it in ours.

``python -m indexmem.engine.grammar_check MODEL`` reads a grammar on stdin, loads the model's
vocabulary, creates llama.cpp's grammar sampler and applies it once to the whole vocabulary;
it prints ``ok``, or exits 1 after llama.cpp printed why. A crash, an abort or a runaway grammar
(time, memory) costs only the child. The parent caches verdicts per model and grammar text.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import GrammarError

TIMEOUT = 30.0  # seconds for a check, model load included
MEMORY_LIMIT = 8 << 30  # the child's address space
CACHE_SIZE = 256
_REASON = re.compile(
    r"(error parsing grammar: .*|failed to parse grammar|left recursion.*|does not contain a .*)"
)

_cache: OrderedDict[tuple[str, str], str | None] = OrderedDict()
_lock = threading.Lock()  # one check at a time: each holds a model's vocabulary in a process


def check_grammar(model_path, text: str) -> None:
    """Raise GrammarError unless llama.cpp parses ``text`` and applies it without failing."""
    key = (str(Path(model_path).resolve()), hashlib.sha256(text.encode()).hexdigest())
    with _lock:
        if key not in _cache:
            _cache[key] = _run_child(key[0], text)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        problem = _cache[key]
    if problem is not None:
        raise GrammarError(problem)


def _run_child(model_path: str, text: str) -> str | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    package_parent = Path(__file__).parents[2]  # the child imports this copy of indexmem
    if (package_parent / "indexmem").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_parent), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "indexmem.engine.grammar_check", model_path],
            input=text.encode(),
            capture_output=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return f"the grammar took more than {TIMEOUT:.0f} s to check (too complex)"
    if done.returncode == 0 and done.stdout.strip() == b"ok":
        return None
    stderr = done.stderr.decode("utf-8", "replace")
    reasons = list(dict.fromkeys(m.group(1).strip() for m in _REASON.finditer(stderr)))
    if len(reasons) > 1 and "failed to parse grammar" in reasons:
        reasons.remove("failed to parse grammar")  # the generic line after the specific one
    if done.returncode < 0:
        return f"llama.cpp failed on this grammar (signal {-done.returncode})"
    return "invalid grammar: " + ("; ".join(reasons) or stderr.strip()[-500:] or "refused")


def _child(model_path: str) -> int:
    import ctypes

    import numpy as np

    from .token_data import TokenData
    from .tokenizer import Tokenizer

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    text = sys.stdin.buffer.read()
    tokenizer = Tokenizer(model_path)
    lib = tokenizer._lib
    sampler = lib.llama_sampler_init_grammar(tokenizer.vocab, ctypes.c_char_p(text), b"root")
    if not sampler:
        return 1
    data = TokenData(tokenizer.n_vocab)
    data.fill(np.zeros(tokenizer.n_vocab, np.float32))
    data.apply(sampler)
    lib.llama_sampler_free(sampler)
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))

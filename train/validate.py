"""A new sidecar checked where it will be used: the engine loads it beside its model (which
checks the pairing) and answers held-out retrieval windows with a bounded cache, beside the full
cache. Each window is cut after the last question's "Answer:"; the answer is decoded greedily."""

from __future__ import annotations

from pathlib import Path

from ..convert.reader import memory_layers
from ..engine.api import Engine
from ..engine.eviction import budget_from_ratio
from .retrieval import BROAD, retrieval_windows
from .targets import answer_spans

CONFIGS = (
    ("full", None, False),
    ("indexmem-nomem", 0.75, False),
    ("indexmem-nomem", 0.9, False),
    ("indexmem", 0.75, True),
    ("indexmem", 0.9, True),
)


def answered_windows(engine: Engine, text: str, seq_len: int, count: int, seed: int = 7):
    """(window, its answers' token spans) of ``count`` held-out retrieval windows (3 facts, the
    broad wordings); windows whose answers cannot be located are left out."""
    out = []
    for w in retrieval_windows(engine, text, seq_len, count, 3, seed=seed, templates=BROAD):
        spans = answer_spans(lambda s: engine.tokenize(s, add_special=False), w)
        if spans:
            out.append((w, spans))
    return out


def question_prompts(engine: Engine, text: str, seq_len: int, count: int) -> list[tuple[list[int], str]]:
    """(tokens up to the last question's "Answer:", the answer) of ``count`` held-out windows."""
    return [
        (w.tokens[: spans[-1][0]], w.asked[-1].answer)
        for w, spans in answered_windows(engine, text, seq_len, count)
    ]


def validate_sidecar(
    model_path, sidecar, heldout: Path, seq_len: int, threads: int = 1, count: int = 6
) -> dict:
    text = Path(heldout).read_text()
    results = {}
    prompts = None
    shut = not memory_layers(sidecar)
    for spec, ratio, memory in CONFIGS:
        if memory and shut:
            continue  # no layer carries a memory: the same cache as without it
        opts = dict(policy="full", indexmem=False)
        if ratio is not None:
            opts = dict(
                policy="indexmem",
                indexmem=str(sidecar),
                memory=memory,
                budget=budget_from_ratio(seq_len, ratio),
                window=64,
            )
        engine = Engine.load(str(model_path), n_threads=threads, n_ctx=seq_len + 32, **opts)
        try:
            prompts = prompts or question_prompts(engine, text, seq_len, count)
            found = sum(answer in engine.generate(tokens, max_tokens=16) for tokens, answer in prompts)
        finally:
            engine.close()
        results[spec if ratio is None else f"{spec} @ {ratio}"] = f"{found}/{len(prompts)}"
    return results

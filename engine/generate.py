"""Chunked prefill and the decode loop."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .forward import ForwardRunner
from .sampling import Sampler


def prefill(runner: ForwardRunner, tokens, start_pos: int, n_batch: int, all_logits: bool = False,
            on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Feed ``tokens`` in chunks of ``n_batch``; logits of every position or of the last one."""
    tokens = np.asarray(tokens, dtype=np.int32)
    outs = []
    for i in range(0, len(tokens), n_batch):
        chunk = tokens[i: i + n_batch]
        positions = np.arange(start_pos + i, start_pos + i + len(chunk), dtype=np.int32)
        last = i + n_batch >= len(tokens)
        logits, _ = runner.step(chunk, positions, all_logits=all_logits)
        if all_logits or last:
            outs.append(logits)
        if on_chunk:
            on_chunk(len(chunk))
    return np.concatenate(outs, axis=0)


def decode(runner: ForwardRunner, sampler: Sampler, first_logits: np.ndarray, history: list[int],
           max_tokens: int, is_stop: Callable[[int], bool], n_ctx: int) -> Iterator[int]:
    """Sample from ``first_logits``, then feed each sampled token back, until a stop token,
    ``max_tokens`` or a full context. ``history`` (tokens in the cache) is extended in place."""
    logits = first_logits
    for i in range(max_tokens):
        token = sampler.sample(logits, history)
        if is_stop(token):
            return
        yield token
        if i == max_tokens - 1 or len(history) >= n_ctx:
            return  # the last token is fed at the start of the next call, if there is one
        logits, _ = runner.step(np.array([token], dtype=np.int32),
                                np.array([len(history)], dtype=np.int32))
        logits = logits[0]
        history.append(token)

"""Feeding tokens into the cache (chunked prefill, context shifts) and the decode loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ContextOverflowError
from .context_shift import shift_positions
from .forward import ForwardRunner
from .history import History
from .sampler_chain import SamplerChain


class Feeder:
    """Puts tokens into the cache at the right RoPE positions and keeps the history in step.

    A full cache ends at ``n_ctx`` tokens. A bounded cache never fills, so its conversation
    goes on: when the next position would pass ``n_ctx``, positions are shifted back by half
    of it (:mod:`context_shift`)."""

    def __init__(self, runner: ForwardRunner, n_batch: int, n_ctx: int, sinks: int):
        self.runner, self.n_batch, self.n_ctx, self.sinks = runner, n_batch, n_ctx, sinks
        self.history = History()
        self.unfed: list[int] = []  # the last sampled token: fed with whatever comes next
        self.timing = {"prompt": [0, 0.0], "decode": [0, 0.0]}  # tokens, seconds since reset

    @property
    def unbounded(self) -> bool:
        """Whether the conversation may run past ``n_ctx`` (a bounded cache)."""
        return self.runner.evictor is not None and self.n_batch <= self.n_ctx // 2

    def reset(self) -> None:
        self.history = History()
        self.unfed = []
        self.timing = {"prompt": [0, 0.0], "decode": [0, 0.0]}

    def speeds(self) -> dict[str, float | None]:
        """Tokens per second of prompt processing and of decoding since the last reset."""
        return {f"{kind}_tok_s": (n / secs if secs > 0 else None) for kind, (n, secs) in self.timing.items()}

    def room(self) -> int | None:
        """Tokens that still fit (None: no limit)."""
        return None if self.unbounded else self.n_ctx - len(self.history)

    def feed(
        self,
        tokens,
        all_logits: bool = False,
        cancel: threading.Event | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> np.ndarray | None:
        """Append ``tokens`` to the cache in chunks; logits of every position or of the last one
        (None if ``cancel`` was set before the last chunk: the chunks fed so far stay fed)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        room = self.room()
        if room is not None and len(tokens) > room:
            raise ContextOverflowError(
                f"{len(tokens)} more tokens do not fit: {len(self.history)} of "
                f"{self.n_ctx} context tokens are used (load with a larger n_ctx "
                f"or a bounded cache)"
            )
        outs = []
        chunks, last_alone = self._chunks(tokens, all_logits)
        end = len(chunks) - (2 if last_alone else 1)  # the prompt's last chunk (and its last token's step)
        for i, chunk in enumerate(chunks):
            if cancel is not None and cancel.is_set():
                return None
            self._open_recall(i >= end)
            logits = self._step(chunk, all_logits)
            outs.append(logits)
            if on_chunk:
                on_chunk(len(chunk))
        return np.concatenate(outs if all_logits else outs[-1:], axis=0) if outs else None

    def _chunks(self, tokens: np.ndarray, all_logits: bool) -> tuple[list[np.ndarray], bool]:
        """``tokens`` in steps of ``n_batch``, and whether the last token has a step of its own:
        with the recall tier it does, since the compression after the chunk before it may bring
        evicted tokens back, and the logits the next token is sampled from should see them."""
        body = (
            tokens[:-1] if self.runner.recall is not None and not all_logits and len(tokens) > 1 else tokens
        )
        chunks = [body[i : i + self.n_batch] for i in range(0, len(body), self.n_batch)]
        last_alone = len(body) < len(tokens)
        return chunks + ([tokens[-1:]] if last_alone else []), last_alone

    def _open_recall(self, is_open: bool) -> None:
        if self.runner.recall is not None:
            self.runner.recall.open = is_open

    def _step(self, chunk: np.ndarray, all_logits: bool, kind: str = "prompt") -> np.ndarray:
        t0 = time.perf_counter()
        cache = self.runner.cache
        start = len(self.history) - cache.position_shift
        if start + len(chunk) > self.n_ctx and self.unbounded:
            delta = self.n_ctx // 2
            shift_positions(self.runner, delta, self.sinks)
            start -= delta
        positions = np.arange(start, start + len(chunk), dtype=np.int32)
        logits, _ = self.runner.step(chunk, positions, all_logits=all_logits)
        self.history.extend(chunk)
        timing = self.timing[kind]
        timing[0] += len(chunk)
        timing[1] += time.perf_counter() - t0
        return logits

    def decode(
        self,
        chain: SamplerChain,
        first_logits: np.ndarray,
        max_tokens: int,
        is_stop: Callable[[int], bool],
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        """Sample from ``first_logits``, then feed each sampled token back, until a stop token,
        ``max_tokens``, a full context or ``cancel``. The last token yielded is left in
        ``unfed``: it is fed with the next tokens, if any come."""
        logits, pending = first_logits, None
        try:
            for i in range(max_tokens):
                if cancel is not None and cancel.is_set():
                    return
                token = chain.sample(logits)
                if is_stop(token):
                    return
                chain.accept(token)
                pending = token
                yield token
                room = self.room()
                if (
                    i == max_tokens - 1
                    or (room is not None and room <= 0)
                    or (cancel is not None and cancel.is_set())
                ):
                    return
                self._open_recall(True)
                logits = self._step(np.array([token], dtype=np.int32), False, "decode")[0]
                pending = None
        finally:  # also when the caller stops iterating
            if pending is not None:
                self.unfed = [pending]

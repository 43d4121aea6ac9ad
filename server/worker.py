"""One thread that runs the engine's generations one at a time, in the order they came.

Each request becomes a :class:`Job`; the worker streams its text into an asyncio queue of the
request's event loop. An engine is not re-entrant and its lock belongs to the thread that takes
it, so all generation happens on this one thread; a full queue refuses new jobs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from ..engine.sampling import SamplingParams
from ..engine.tokenizer import StreamDecoder


class Busy(Exception):
    """The job queue is full."""


@dataclass
class Job:
    prompt: str
    max_tokens: int
    sampling: SamplingParams
    grammar: str | None  # GBNF, already checked
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class EngineWorker:
    def __init__(self, engine, max_queue: int = 16):
        self.engine = engine
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="indexmem-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._jobs.maxsize} requests are already waiting") from None

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.is_set():  # the client left while the job waited
                continue
            try:
                self._generate(job)
            except Exception as exc:  # reported to the request; the worker keeps serving
                job.emit("error", exc)

    def _generate(self, job: Job) -> None:
        engine = self.engine
        ids = engine.tokenize(job.prompt)
        dec = StreamDecoder(engine.tokenizer)
        hold = max((len(s) for s in job.stops), default=1) - 1  # text a stop string may still begin in
        pending, n_tokens, finish = "", 0, "stop"
        tokens = engine.generate_tokens(
            ids, max_tokens=job.max_tokens, cancel=job.cancel, sampling=job.sampling, grammar=job.grammar
        )
        try:
            for token in tokens:
                n_tokens += 1
                pending += dec.feed(token)
                cut = _first_stop(pending, job.stops)
                if cut is not None:
                    pending = pending[:cut]
                    break
                if len(pending) > hold:
                    job.emit("text", pending[: len(pending) - hold])
                    pending = pending[len(pending) - hold :]
            else:
                pending += dec.flush()
                cut = _first_stop(pending, job.stops)
                pending = pending if cut is None else pending[:cut]
                finish = "length" if n_tokens >= job.max_tokens and cut is None else "stop"
        finally:
            tokens.close()
        if pending:
            job.emit("text", pending)
        job.emit("done", finish, len(ids), n_tokens)


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None

"""The HTTP API: /v1/chat/completions, /v1/completions (streamed as server-sent events or
not), /v1/models and /health, on one engine behind an :class:`EngineWorker`.

Bodies are read up to ``max_request_bytes`` (413 past it), parsed and validated before a job is
queued (400 on malformed JSON or fields, with OpenAI's error shape), and ``max_tokens`` is
capped by the server's limit (400 above it). A grammar or JSON schema (``response_format``) is
converted and checked before the job is queued: a bad one is a 400. A client that goes away
before its reply is complete cancels its job, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from ..engine.grammar_check import check_grammar
from ..errors import ContextOverflowError, IndexmemError
from .schemas import ChatRequest, CompletionRequest
from .worker import Busy, EngineWorker, Job


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind}}, status_code=self.status)


def create_app(
    engine, model_id: str, max_request_bytes: int = 1 << 20, max_tokens_limit: int = 4096, max_queue: int = 16
) -> FastAPI:
    app = FastAPI(title="indexmem", docs_url=None, redoc_url=None)
    worker = EngineWorker(engine, max_queue)
    app.state.worker = worker

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "indexmem"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _parse(request, ChatRequest, max_request_bytes)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompt = engine.chat_prompt(messages)
        except IndexmemError as exc:
            raise ApiError(400, str(exc)) from exc
        return await _complete(req, prompt, chat=True, request=request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _parse(request, CompletionRequest, max_request_bytes)
        return await _complete(req, req.prompt, chat=False, request=request)

    async def _complete(req, prompt: str, chat: bool, request: Request):
        max_tokens = req.token_limit() or max_tokens_limit
        if max_tokens > max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds this server's limit of {max_tokens_limit}")
        sampling, grammar = await _constraints(req)
        job = Job(prompt, max_tokens, sampling, grammar, req.stop, asyncio.get_running_loop())
        try:
            worker.submit(job)
        except Busy as exc:
            raise ApiError(503, f"server busy: {exc}", "server_error") from exc
        shape = _Shape(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", model_id, chat)
        watcher = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            first = await job.events.get()  # errors before the first token still get a status code
            if first[0] == "error":
                raise _api_error_of(first[1])
            if req.stream:  # from here the stream itself notices a client that leaves
                return StreamingResponse(_sse(job, first, shape), media_type="text/event-stream")
            return await _whole(job, first, shape)
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        finally:
            watcher.cancel()

    async def _constraints(req):
        """The request's sampling parameters and checked grammar (400 if either is bad)."""
        try:
            sampling, grammar = req.sampling(engine.sampling_defaults), req.grammar_text()
            if grammar is not None:  # parsed in a child process: off the event loop
                await asyncio.to_thread(check_grammar, engine.model_path, grammar)
        except (ValueError, TypeError, IndexmemError) as exc:
            raise ApiError(400, str(exc)) from exc
        return sampling, grammar

    return app


async def _parse(request: Request, model, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, f"invalid request: {details}") from exc


async def _whole(job: Job, first, shape: _Shape) -> dict:
    text, event = [], first
    while event[0] == "text":
        text.append(event[1])
        event = await job.events.get()
    if event[0] == "error":
        raise _api_error_of(event[1])
    _, finish, n_prompt, n_completion = event
    return shape.whole("".join(text), finish, n_prompt, n_completion)


async def _cancel_when_gone(request: Request, job: Job, every: float = 0.25) -> None:
    """Cancel ``job`` if its client disconnects before the reply is handed over."""
    while not job.cancel.is_set():
        if await request.is_disconnected():
            job.cancel.set()
            return
        await asyncio.sleep(every)


def _api_error_of(exc: Exception) -> ApiError:
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), "context_length_exceeded")
    if isinstance(exc, (IndexmemError, ValueError)):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {exc}", "server_error")


async def _sse(job: Job, first, shape: _Shape):
    """The events of ``job`` as server-sent events, ending with ``data: [DONE]``."""
    try:
        if shape.chat:
            yield shape.sse(shape.chunk({"role": "assistant", "content": ""}, None))
        event = first
        while True:
            if event[0] == "text":
                yield shape.sse(shape.chunk(event[1], None))
            elif event[0] == "done":
                yield shape.sse(shape.chunk("", event[1]))
                break
            else:  # an error after the response started: report it in the stream
                yield shape.sse({"error": {"message": str(event[1]), "type": "server_error"}})
                break
            event = await job.events.get()
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # the client went away, or the stream ended: nothing more to generate


class _Shape:
    """OpenAI's response objects for chat or text completions."""

    def __init__(self, ident: str, model: str, chat: bool):
        self.ident, self.model, self.chat, self.created = ident, model, chat, int(time.time())

    def _envelope(self, kind: str, choice: dict) -> dict:
        return {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, **choice}],
        }

    def whole(self, text: str, finish: str, n_prompt: int, n_completion: int) -> dict:
        choice = (
            {"message": {"role": "assistant", "content": text}}
            if self.chat
            else {"text": text, "logprobs": None}
        )
        body = self._envelope(
            "chat.completion" if self.chat else "text_completion", {**choice, "finish_reason": finish}
        )
        body["usage"] = {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion,
        }
        return body

    def chunk(self, delta, finish: str | None) -> dict:
        if self.chat:
            content = delta if isinstance(delta, dict) else ({"content": delta} if delta else {})
            return self._envelope("chat.completion.chunk", {"delta": content, "finish_reason": finish})
        return self._envelope("text_completion", {"text": delta, "logprobs": None, "finish_reason": finish})

    @staticmethod
    def sse(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

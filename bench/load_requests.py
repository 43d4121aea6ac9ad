"""The requests the load script sends, over plain ``http.client`` (loopback only).

Each returns an :class:`Outcome`: the HTTP status (0: no answer), completion tokens, and whether
the reply was what that kind of request promises (a JSON-mode reply parses, a stream ends with
``[DONE]``, a bad body gets its 4xx).
"""

from __future__ import annotations

import http.client
import json
from contextlib import closing
from dataclasses import dataclass

MESSAGES = [
    [{"role": "user", "content": "Name three rivers in Europe."}],
    [{"role": "user", "content": "My name is Ada and my locker code is 4471. Please remember it."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@dataclass
class Outcome:
    status: int
    tokens: int = 0
    ok: bool = True
    note: str = ""


class Client:
    def __init__(self, host: str, port: int, timeout: float, max_tokens: int, max_body: int):
        self.host, self.port, self.timeout = host, port, timeout
        self.max_tokens, self.max_body = max_tokens, max_body

    def _post(self, body: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        return conn, conn.getresponse()

    def _body(self, i: int, **extra) -> bytes:
        body = {"messages": MESSAGES[i % len(MESSAGES)], "max_tokens": self.max_tokens, "seed": i, **extra}
        return json.dumps(body).encode()

    def whole(self, i: int) -> Outcome:
        conn, r = self._post(self._body(i))
        with closing(conn):
            data = r.read()
        if r.status != 200:
            return Outcome(r.status)
        return Outcome(200, json.loads(data)["usage"]["completion_tokens"])

    def stream(self, i: int, leave_after: int | None = None) -> Outcome:
        """A streamed reply, read to ``[DONE]`` (or dropped after ``leave_after`` events)."""
        conn, r = self._post(self._body(i, stream=True))
        with closing(conn):
            if r.status != 200:
                r.read()
                return Outcome(r.status)
            events = 0
            for line in r:
                if line.startswith(b"data: [DONE]"):
                    return Outcome(200, max(events - 2, 0))  # less the role and finish chunks
                if line.startswith(b"data: "):
                    events += 1
                    if leave_after is not None and events >= leave_after:
                        return Outcome(200, events - 1, note="left")
        return Outcome(200, events, ok=False, note="stream ended without [DONE]")

    def json_mode(self, i: int) -> Outcome:
        schema = i % 2 == 0
        fmt = (
            {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
            if schema
            else {"type": "json_object"}
        )
        conn, r = self._post(self._body(i, response_format=fmt, max_tokens=max(self.max_tokens, 160)))
        with closing(conn):
            data = r.read()
        if r.status != 200:
            return Outcome(r.status)
        reply = json.loads(data)
        content, finish = reply["choices"][0]["message"]["content"], reply["choices"][0]["finish_reason"]
        tokens = reply["usage"]["completion_tokens"]
        try:
            value = json.loads(content)
        except json.JSONDecodeError:
            cut = finish == "length"  # max_tokens ended it: not a failure of JSON mode
            return Outcome(200, tokens, ok=cut, note="cut by max_tokens" if cut else "unparsable JSON")
        good = isinstance(value, dict) and (not schema or {"name", "age"} <= value.keys())
        return Outcome(200, tokens, ok=good, note="" if good else "schema not met")

    def malformed(self, i: int) -> Outcome:
        conn, r = self._post(b'{"messages": [{"role": "user", "content": ')
        with closing(conn):
            r.read()
        return Outcome(r.status, ok=r.status == 400)

    def oversized(self, i: int) -> Outcome:
        conn, r = self._post(b'{"pad": "' + b"x" * (self.max_body + 1) + b'"}')
        with closing(conn):
            r.read()
        return Outcome(r.status, ok=r.status == 413)

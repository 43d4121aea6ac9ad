"""A chat fed turn by turn: the cache receives each turn's new tokens only.

Re-rendering the whole conversation every turn (what :meth:`Engine.chat` does) needs every
earlier message and re-feeds everything once the cache has evicted. A :class:`Conversation`
instead appends the template's text for the new user turn, generates the reply, and closes the
assistant turn in the cache right away. Nothing but the cache remembers the conversation, so it
goes on past the budget and past the model's context (with a bounded cache), and a saved
session continues in another process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..errors import UnsupportedModelError

_PROBE_USER, _PROBE_REPLY = "Hi", "Hello"  # stand-ins that locate the template's turn texts


class TurnTemplate:
    """The chat template split into its parts: a first turn, the next user turn, the close of
    an assistant turn."""

    def __init__(self, render):
        self._render = render  # (messages, add_assistant) -> str
        u, a = {"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}
        asked, answered = render([u], True), render([u, a], False)
        if not answered.startswith(asked + _PROBE_REPLY):
            raise UnsupportedModelError(
                "this chat template cannot be fed turn by turn (it rewrites earlier turns); use Engine.chat"
            )
        self.close = answered[len(asked) + len(_PROBE_REPLY) :]
        self._answered = answered
        self._probe = [u, a]

    def first(self, user: str, system: str | None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return self._render(messages, True)

    def next(self, user: str) -> str:
        text = self._render(self._probe + [{"role": "user", "content": user}], True)
        if not text.startswith(self._answered):
            raise UnsupportedModelError("this chat template cannot be fed turn by turn; use Engine.chat")
        return text[len(self._answered) :]


class Conversation:
    """``say(text)`` sends one user turn and returns (or streams) the reply. The engine's cache
    is the conversation: :meth:`Engine.save_session` / :meth:`Engine.load_session` save and
    restore it, and a Conversation on a restored engine continues it."""

    def __init__(self, engine, system: str | None = None, resume: bool = False):
        self.engine = engine
        self.system = system
        self.template = TurnTemplate(engine.tokenizer.apply_chat_template)
        self.reached_max_tokens = False  # the last reply ended at max_tokens, not at its end of turn
        if not resume:
            engine.reset()

    @property
    def started(self) -> bool:
        return len(self.engine.feeder.history) > 0 or bool(self.engine.feeder.unfed)

    def reset(self) -> None:
        self.engine.reset()

    def say(
        self,
        text: str,
        max_tokens: int = 256,
        stream: bool = False,
        cancel: threading.Event | None = None,
        **sampling,
    ):
        """The reply to ``text`` (a str, or with ``stream=True`` an iterator of text pieces).
        However the reply ends (end of turn, ``max_tokens``, ``cancel``, or the caller stops
        iterating), the assistant turn is closed in the cache. ``sampling`` options, ``grammar``
        and ``json_schema``: as :meth:`Engine.generate_tokens` (a grammar holds this reply only;
        a bad one raises GrammarError before the turn is fed)."""
        first = not self.started
        turn = self.template.first(text, self.system) if first else self.template.next(text)
        tokens = self.engine.tokenize(turn, add_special=first)
        pieces = self._reply(tokens, max_tokens, cancel, sampling)
        return pieces if stream else "".join(pieces)

    def _reply(self, tokens, max_tokens, cancel, sampling) -> Iterator[str]:
        engine = self.engine
        self.reached_max_tokens = False
        token_iter = engine.generate_tokens(
            tokens, max_tokens=max_tokens, append=True, cancel=cancel, **sampling
        )

        def counted():
            n = 0
            for token in token_iter:
                n += 1
                yield token
            self.reached_max_tokens = n >= max_tokens and not (cancel and cancel.is_set())

        try:
            yield from engine._stream_text(counted())
        finally:
            token_iter.close()  # leaves the last sampled token to be fed with the close
            engine.append(self.template.close)

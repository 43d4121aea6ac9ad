"""Grammars that constrain a reply: GBNF text, or a JSON schema turned into GBNF by
llama-cpp-python's converter (llama.cpp's json-schema-to-grammar).

llama.cpp's grammar parser can abort the process or overflow its stack on some inputs, so a
grammar reaches it in this process only after a child process has parsed it and applied it once
(:mod:`grammar_check`); the verdict is cached per model and grammar text.
"""

from __future__ import annotations

import json

from ..errors import GrammarError
from .grammar_check import check_grammar
from .tokenizer import _import_llama_cpp

MAX_GRAMMAR_BYTES = 256 << 10
JSON_OBJECT_SCHEMA = {"type": "object"}  # what OpenAI's {"type": "json_object"} promises
# The converter shipped with llama-cpp-python lets raw control characters into strings, which
# JSON forbids (llama.cpp's own converter excludes them); its rule is replaced by llama.cpp's.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def grammar_from_schema(schema) -> str:
    """GBNF for a JSON schema (a dict, or its JSON text)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        if not isinstance(json.loads(text), dict | bool):
            raise ValueError("a JSON schema is an object (or true/false)")
        return json_schema_to_gbnf(text).replace(_LOOSE_CHAR, _JSON_CHAR)
    except Exception as exc:  # the converter raises what it meets: ValueError, KeyError, assertions
        raise GrammarError(f"invalid JSON schema: {type(exc).__name__}: {exc}") from exc


def grammar_text(grammar: str | None = None, json_schema=None) -> str | None:
    """The GBNF a request asks for: its ``grammar``, or its ``json_schema`` converted."""
    if grammar is not None and json_schema is not None:
        raise GrammarError("give a grammar or a JSON schema, not both")
    if json_schema is not None:
        return grammar_from_schema(json_schema)
    if grammar is None:
        return None
    if not isinstance(grammar, str) or not grammar.strip():
        raise GrammarError("the grammar is empty")
    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the grammar is over {MAX_GRAMMAR_BYTES} bytes")
    return grammar


class GrammarSampler:
    """llama.cpp's grammar sampler for a grammar that the checker accepted. ``prefixes``
    (:class:`VocabPrefixes`) narrows the candidates it is given; it is dropped for a grammar
    that names tokens (``<...>``), which llama.cpp matches by id."""

    def __init__(self, text: str, vocab, model_path, prefixes=None):
        check_grammar(model_path, text)
        self.prefixes = None if "<" in text else prefixes
        self._lib = _import_llama_cpp()
        self.sampler = self._lib.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        if not self.sampler:
            self.sampler = None
            raise GrammarError("llama.cpp refused the grammar")

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        if getattr(self, "sampler", None):
            self._lib.llama_sampler_free(self.sampler)
        self.sampler = None

    def __del__(self):
        self.close()

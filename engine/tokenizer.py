"""Tokenizer, detokenizer and chat templates, all from llama.cpp (a vocab-only model load)."""

from __future__ import annotations

import codecs
import ctypes
from pathlib import Path

from ..errors import ModelFormatError


def _import_llama_cpp():
    """llama_cpp installs its own log handler on import; route llama.cpp's and ggml's messages
    back through ours (warnings and errors only)."""
    import llama_cpp

    from ..ggml_ops import bindings

    if not getattr(llama_cpp, "_indexmem_logs", None):
        llama_cpp._indexmem_logs = llama_cpp.llama_log_callback(bindings.log_to_stderr)
        llama_cpp.llama_log_set(llama_cpp._indexmem_logs, None)
    return llama_cpp


# llama.cpp's built-in template used for a model whose file has none: the family's own turn
# markers where its vocabulary has them (Gemma's base models know <start_of_turn>), else ChatML
FALLBACK_TEMPLATES = {"gemma3": "gemma"}


class Tokenizer:
    def __init__(self, path: str | Path, chat_template: str | None = None, arch: str | None = None):
        llama_cpp = _import_llama_cpp()
        self._lib = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelFormatError(f"{path}: llama.cpp could not load the vocabulary")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.bos = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos = llama_cpp.llama_vocab_eos(self._vocab)
        self.chat_template = chat_template
        self.fallback_template = FALLBACK_TEMPLATES.get(arch, "chatml")

    @property
    def vocab(self):
        """llama.cpp's ``llama_vocab *`` (valid while this tokenizer is open)."""
        if not self._model:
            raise RuntimeError("the tokenizer is closed")
        return self._vocab

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS where the model's vocab asks for it."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._lib.llama_token * n_max)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:  # the buffer was too small: -n is the size needed
            n_max = -n
            buf = (self._lib.llama_token * n_max)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise ValueError(f"text of {len(data)} bytes could not be tokenized")
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def decode(self, tokens, special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def apply_chat_template(self, messages: list[dict], add_assistant: bool = True) -> str:
        """Render ``messages`` ([{"role", "content"}]) with llama.cpp's template engine.

        Models without a template fall back to a built-in one (:data:`FALLBACK_TEMPLATES`)."""
        tmpl = (self.chat_template or self.fallback_template).encode()
        msgs = (self._lib.llama_chat_message * len(messages))()
        keep = []  # the bytes must outlive the C call
        for i, m in enumerate(messages):
            role, content = m["role"].encode(), m["content"].encode()
            keep += [role, content]
            msgs[i].role, msgs[i].content = role, content
        size = 4096 + sum(len(b) for b in keep) * 2
        buf = ctypes.create_string_buffer(size)
        n = self._lib.llama_chat_apply_template(tmpl, msgs, len(messages), add_assistant, buf, size)
        if n > size:
            buf = ctypes.create_string_buffer(n)
            n = self._lib.llama_chat_apply_template(tmpl, msgs, len(messages), add_assistant, buf, n)
        if n < 0:
            raise ModelFormatError("llama.cpp does not support this model's chat template")
        return buf.raw[:n].decode("utf-8", errors="replace")

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()


class StreamDecoder:
    """Turns tokens into text as they come, never emitting half of a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._tok.piece(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

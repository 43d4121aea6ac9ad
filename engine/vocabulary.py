"""The tokenizer metadata checked before llama.cpp loads it.

llama.cpp's vocabulary loader reads some keys through unchecked C accessors and stops the whole
process (GGML_ASSERT / GGML_ABORT) on others: a token text that occurs twice, a string array
where it expects numbers, arrays shorter than the token list (read past their end), a token of
type BYTE that is not ``<0xXX>``, or an SPM vocabulary without its 256 byte tokens (the
tokenizer throws through the C API on a character it cannot byte-encode). Each of these is a
ModelFormatError here instead.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import ModelFormatError
from ..ggml_ops import structs as S
from ..ggml_ops.gguf_reader import GGUFFile

TOKEN_TYPE_BYTE = 6
BYTE_TOKEN = re.compile(rb"<0x[0-9A-Fa-f]{2}>")
BYTE_PIECE_VOCABS = ("llama", "t5")  # SPM and UGM read a byte token's value from its text
NO_VOCAB = ("no_vocab", "none")
# files already checked, by (path, inode, size, mtime): loading an engine reads its model twice
_checked: set[tuple] = set()


def check_vocabulary(gguf: GGUFFile) -> None:
    stat = os.stat(gguf.path)
    key = (str(gguf.path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _checked:
        return
    _check(gguf)
    _checked.add(key)


def _check(gguf: GGUFFile) -> None:
    path = gguf.path
    model = gguf.get("tokenizer.ggml.model")
    if model in NO_VOCAB:
        raise ModelFormatError(f"{path}: the file has no vocabulary (tokenizer.ggml.model = {model!r})")
    if gguf.value_type("tokenizer.ggml.tokens") is None:
        return  # llama.cpp refuses the file itself, cleanly
    if gguf.value_type("tokenizer.ggml.tokens") != (S.GGUF_TYPE_ARRAY, S.GGUF_TYPE_STRING):
        raise ModelFormatError(f"{path}: tokenizer.ggml.tokens is not an array of strings")
    # llama.cpp names an empty token "[EMPTY_<id>]" before looking for duplicates
    texts = [t or f"[EMPTY_{i}]".encode() for i, t in enumerate(gguf.raw_strings("tokenizer.ggml.tokens"))]
    n = len(texts)
    if len(set(texts)) != n:
        seen, dup = set(), None
        for t in texts:
            if t in seen:
                dup = t
                break
            seen.add(t)
        raise ModelFormatError(f"{path}: token {dup!r} occurs more than once in the vocabulary")
    # llama.cpp reads these through raw pointers, one element per token
    for key, element, name in (
        ("tokenizer.ggml.scores", S.GGUF_TYPE_FLOAT32, "float32"),
        ("tokenizer.ggml.token_type", S.GGUF_TYPE_INT32, "int32"),
    ):
        kind = gguf.value_type(key)
        if kind is not None and (kind != (S.GGUF_TYPE_ARRAY, element) or gguf.array_length(key) != n):
            raise ModelFormatError(f"{path}: {key} must be an array of {n} {name} values")
    if gguf.value_type("tokenizer.ggml.merges") not in (None, (S.GGUF_TYPE_ARRAY, S.GGUF_TYPE_STRING)):
        raise ModelFormatError(f"{path}: tokenizer.ggml.merges is not an array of strings")
    charsmap = gguf.value_type("tokenizer.ggml.precompiled_charsmap")
    if charsmap is not None and S.GGUF_TYPE_STRING in charsmap:
        raise ModelFormatError(f"{path}: tokenizer.ggml.precompiled_charsmap is not a byte array")
    _check_byte_tokens(gguf, model, texts)


def _check_byte_tokens(gguf: GGUFFile, model, texts: list[bytes]) -> None:
    types = gguf.get("tokenizer.ggml.token_type")
    byte_ids = np.flatnonzero(types == TOKEN_TYPE_BYTE) if types is not None else []
    for i in byte_ids:
        if model not in BYTE_PIECE_VOCABS or not BYTE_TOKEN.fullmatch(texts[i]):
            raise ModelFormatError(
                f"{gguf.path}: token {i} ({texts[i][:20]!r}) has the byte type, "
                f"which a {model!r} vocabulary cannot decode"
            )
    if model in BYTE_PIECE_VOCABS:  # their tokenizer falls back to byte tokens for unknown characters
        present = set(texts)
        missing = [b for b in range(256) if f"<0x{b:02X}>".encode() not in present]
        if missing:
            raise ModelFormatError(
                f"{gguf.path}: the vocabulary lacks the byte token "
                f"<0x{missing[0]:02X}> ({len(missing)} of 256 missing)"
            )

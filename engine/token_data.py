"""llama.cpp's ``llama_token_data_array`` over a numpy buffer that we own.

A sampler may reorder, shorten or (so llama.h says) re-point the array it is given, so results
are read back through the struct, with every index checked before it is used.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .tokenizer import _import_llama_cpp

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class TokenData:
    """Room for ``capacity`` candidates (token id, logit, probability) of a vocabulary of
    ``n_vocab`` tokens (default: ``capacity``)."""

    def __init__(self, capacity: int, n_vocab: int | None = None):
        self._lib = _import_llama_cpp()
        if ctypes.sizeof(self._lib.llama_token_data) != TOKEN_DATA.itemsize:
            raise RuntimeError("llama_token_data does not have the layout this module assumes")
        self.capacity = int(capacity)
        self.capacity_ids = int(n_vocab or capacity)  # ids must be below this
        self.buffer = np.zeros(self.capacity, TOKEN_DATA)
        self.struct = self._lib.llama_token_data_array()
        self._ids = np.arange(self.capacity, dtype=np.int32)

    def fill(self, logits: np.ndarray) -> None:
        """Every token of the vocabulary, in id order, with its logit."""
        if len(logits) < self.capacity:
            raise ValueError(f"{len(logits)} logits for a vocabulary of {self.capacity} tokens")
        self.buffer["id"] = self._ids
        self.buffer["logit"] = logits[: self.capacity]
        self.buffer["p"] = 0.0
        self._point(self.capacity)

    def fill_ids(self, ids: np.ndarray, logits: np.ndarray | None = None) -> None:
        """Only the tokens ``ids`` (checked in range), with their logits (or 0)."""
        if len(ids) > self.capacity or (len(ids) and (ids.min() < 0 or ids.max() >= self.capacity_ids)):
            raise ValueError("token ids out of range")
        n = len(ids)
        self.buffer["id"][:n] = ids
        self.buffer["logit"][:n] = 0.0 if logits is None else logits[ids]
        self._point(n)

    def set_one(self, token: int, logit: float = 0.0) -> None:
        self.buffer[0] = (token, logit, 0.0)
        self._point(1)

    def _point(self, size: int) -> None:
        s = self.struct
        s.data = self.buffer.ctypes.data_as(self._lib.llama_token_data_p)
        s.size, s.selected, s.sorted = size, -1, False

    def apply(self, sampler) -> None:
        self._lib.llama_sampler_apply(sampler, ctypes.byref(self.struct))
        size = self.struct.size
        if not self.struct.data or size > self.capacity:
            raise RuntimeError(f"a sampler left an invalid candidate array (size {size})")

    def view(self) -> np.ndarray:
        """The candidates as the last sampler left them (a view, no copy)."""
        size = self.struct.size
        if size == 0:
            return self.buffer[:0]
        address = ctypes.addressof(self.struct.data.contents)
        raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(address)
        return np.frombuffer(raw, dtype=TOKEN_DATA, count=size)

    def selected(self) -> int:
        i = self.struct.selected
        if not 0 <= i < self.struct.size:
            raise RuntimeError(f"the sampler chain selected no candidate (index {i} of {self.struct.size})")
        token = int(self.view()[i]["id"])
        if not 0 <= token < self.capacity_ids:
            raise RuntimeError(f"the sampler chain selected token {token}, outside the vocabulary")
        return token

    def keep_allowed(self) -> int:
        """Drop the candidates a grammar refused (logit -inf); how many are left."""
        view = self.view()
        allowed = view[np.isfinite(view["logit"])]  # a copy: the view may be our own buffer
        self.buffer[: len(allowed)] = allowed
        self._point(len(allowed))
        return len(allowed)

    def n_allowed(self) -> int:
        """Candidates whose logit a grammar left finite."""
        return int(np.isfinite(self.view()["logit"]).sum())

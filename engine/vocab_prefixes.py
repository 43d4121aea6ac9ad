"""Which tokens a grammar can still allow, found from a few hundred probe tokens.

llama.cpp's grammar decides a token by feeding it character by character, so a token is allowed
only if its first byte is, and its first two bytes are: if the grammar refuses the one-byte token
``b``, it refuses every token that starts with ``b``. Probing the one-byte and two-byte tokens
first leaves the grammar far fewer candidates to decide than the whole vocabulary (a grammar that
names tokens, ``<...>``, decides by id instead: there the whole vocabulary is used).
"""

from __future__ import annotations

import numpy as np


class VocabPrefixes:
    """Every token's first byte and first two bytes, and a token spelled exactly so (if any)."""

    def __init__(self, tokenizer, n_vocab: int):
        pieces = [
            tokenizer.piece(t, special=True) for t in range(n_vocab)
        ]  # as llama.cpp's grammar sees them
        self.eog = np.array([t for t in range(n_vocab) if tokenizer.is_eog(t)], dtype=np.int32)
        lengths = np.array([len(p) for p in pieces])
        self.first = np.array([p[0] if p else -1 for p in pieces], dtype=np.int16)
        pairs = sorted({p[:2] for p in pieces if len(p) >= 2})
        pair_index = {p: i for i, p in enumerate(pairs)}
        self.pair = np.array([pair_index[p[:2]] if len(p) >= 2 else -1 for p in pieces], dtype=np.int32)
        self.byte_probe = np.full(256, -1, dtype=np.int32)
        self.pair_probe = np.full(len(pairs), -1, dtype=np.int32)
        for t in np.flatnonzero(lengths == 1)[::-1]:  # the lowest id spelled so is the probe
            self.byte_probe[pieces[t][0]] = t
        for t in np.flatnonzero(lengths == 2)[::-1]:
            self.pair_probe[pair_index[pieces[t]]] = t
        self.pair_first = np.array([p[0] for p in pairs], dtype=np.int16)

    def candidates(self, allowed) -> np.ndarray:
        """Token ids the grammar may allow; ``allowed(ids)`` is the grammar's verdict on probes."""
        byte_ok = np.ones(256, dtype=bool)  # bytes without a probe token stay in
        probes = np.flatnonzero(self.byte_probe >= 0)
        byte_ok[probes] = allowed(self.byte_probe[probes])
        pair_ok = byte_ok[self.pair_first]
        probes = np.flatnonzero(pair_ok & (self.pair_probe >= 0))
        pair_ok[probes] = allowed(self.pair_probe[probes])
        keep = (self.first >= 0) & byte_ok[np.maximum(self.first, 0)]
        keep &= (self.pair < 0) | pair_ok[np.maximum(self.pair, 0)]
        keep[self.eog] = True  # decided by whether the grammar is complete, not by spelling
        return np.flatnonzero(keep).astype(np.int32)

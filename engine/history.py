"""The conversation an engine's cache holds, token by token.

Tokens are kept compactly (4 bytes each) with a rolling hash of the whole conversation. A
restored session knows the tokens before its restore point only by their count and that hash,
plus the last few (for repetition penalties): enough to tell whether a new prompt continues the
conversation, and to save it again.
"""

from __future__ import annotations

from array import array

import numpy as np

HASH_MODULUS = (1 << 61) - 1  # a Mersenne prime: the hash of a concatenation is cheap to extend
_BASE = 1_000_003
RECENT = 256  # tokens kept from before a restore point (for repetition penalties)


def rolling_hash(tokens, start: int = 0) -> int:
    h = start
    for t in tokens:
        h = (h * _BASE + int(t) + 1) % HASH_MODULUS
    return h


class History:
    def __init__(self, anchor_len: int = 0, anchor_hash: int = 0, recent=()):
        self.anchor_len = int(anchor_len)  # tokens before the restore point
        self.anchor_hash = int(anchor_hash)
        self._before = [int(t) for t in recent][-RECENT:]
        self.tokens = array("i")  # tokens after the restore point (all of them without one)
        self.hash = self.anchor_hash

    def __len__(self) -> int:
        return self.anchor_len + len(self.tokens)

    def extend(self, tokens) -> None:
        tokens = [int(t) for t in tokens]
        self.tokens.extend(tokens)
        self.hash = rolling_hash(tokens, self.hash)

    def recent(self, n: int) -> list[int]:
        """The last ``n`` tokens (fewer right after a restore)."""
        if n <= 0:
            return []
        tail = self.tokens[-n:].tolist()
        return (self._before + tail)[-n:] if len(tail) < n else tail

    def common_prefix(self, prompt: np.ndarray) -> int:
        """How many leading tokens of ``prompt`` are the conversation's own."""
        if self.anchor_len:
            if len(prompt) < self.anchor_len or rolling_hash(prompt[: self.anchor_len]) != self.anchor_hash:
                return 0
        mine = np.frombuffer(self.tokens, dtype=np.int32) if len(self.tokens) else np.zeros(0, np.int32)
        theirs = np.asarray(prompt[self.anchor_len : self.anchor_len + len(mine)], dtype=np.int32)
        differ = np.flatnonzero(mine[: len(theirs)] != theirs)
        return self.anchor_len + (int(differ[0]) if len(differ) else len(theirs))

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` tokens (not before the restore point)."""
        if n < self.anchor_len:
            raise ValueError("cannot truncate a restored conversation before its restore point")
        del self.tokens[n - self.anchor_len :]
        self.hash = rolling_hash(self.tokens, self.anchor_hash)

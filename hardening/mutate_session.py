"""Mutators of session files (magic, u32 header length, JSON header, blobs, sha256 trailer).

A byte-level mutation that keeps the old checksum only tests the checksum, so most mutations
recompute it: then the damage reaches the header and blob validation. JSON-level mutations
rewrite the header (wrong types, missing keys, negative or huge counts, wrong blob sizes) and
binary ones edit the slot tables (positions out of range, duplicates, holes) and the tensors
(NaN, inf, huge values; in a quantized cache these land in the blocks' scales and quants).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from dataclasses import dataclass

MAGIC_LEN, LEN_BYTES, DIGEST = 8, 4, 32
WEIRD_VALUES = [
    None,
    "",
    "x",
    "1",
    -1,
    -(2**63),
    2**64,
    2**31,
    1.5,
    True,
    False,
    [],
    {},
    [None],
    ["a"],
    {"a": 1},
    math.nan,
    math.inf,
    [[1]],
    [-1],
    [2**40],
    "\u00ff" * 3,
]


@dataclass
class SessionParts:
    magic: bytes
    header: dict
    header_bytes: int  # the padded header length the file declares
    blobs: list[tuple[str, bytes]]

    @classmethod
    def parse(cls, raw: bytes) -> SessionParts:
        (n_head,) = struct.unpack_from("<I", raw, MAGIC_LEN)
        start = MAGIC_LEN + LEN_BYTES
        header = json.loads(raw[start : start + n_head])
        blobs, at = [], start + n_head
        for name, size in header["blobs"]:
            blobs.append((name, raw[at : at + size]))
            at += size
        return cls(raw[:MAGIC_LEN], header, n_head, blobs)

    def build(self, header_text: bytes | None = None) -> bytes:
        """The file, with a correct checksum over whatever the parts now hold."""
        text = header_text if header_text is not None else json.dumps(self.header).encode()
        text = text.ljust(self.header_bytes)[: max(self.header_bytes, len(text))]
        body = self.magic + struct.pack("<I", len(text)) + text + b"".join(data for _, data in self.blobs)
        return body + hashlib.sha256(body).digest()


@dataclass
class Mutation:
    data: bytes
    what: str


def rehash(body_and_digest: bytes) -> bytes:
    body = body_and_digest[:-DIGEST]
    return body + hashlib.sha256(body).digest()


# --- byte level -----------------------------------------------------------------------------
def _byte_edit(rng: random.Random, raw: bytes, parts: SessionParts) -> tuple[bytes, str]:
    data = bytearray(raw)
    header_start = MAGIC_LEN + LEN_BYTES
    blob_start = header_start + parts.header_bytes
    region = rng.choice(["magic", "length", "header", "blobs", "anywhere"])
    span = {
        "magic": (0, MAGIC_LEN),
        "length": (MAGIC_LEN, header_start),
        "header": (header_start, header_start + len(json.dumps(parts.header))),
        "blobs": (blob_start, len(raw) - DIGEST),
        "anywhere": (0, len(raw)),
    }[region]
    if span[1] <= span[0]:
        span = (0, len(raw))
    spots = [rng.randrange(*span) for _ in range(rng.randint(1, 6))]
    flip = rng.random() < 0.5
    for pos in spots:
        data[pos] = data[pos] ^ (1 << rng.randrange(8)) if flip else rng.choice([0, 0xFF, 0x22, 0x5B, 0x80])
    return bytes(data), f"{'bit flips' if flip else 'bytes set'} in {region} at {spots}"


def _resize(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.6:
        cut = rng.randrange(0, len(raw))
        return raw[:cut], f"truncated at {cut}"
    extra = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 31, 32, 33, 4096])))
    return raw + extra, f"{len(extra)} bytes appended"


def raw_corruption(rng, raw, parts):
    """Bytes changed and the old checksum kept: must be refused by the checksum."""
    data, what = _byte_edit(rng, raw, parts) if rng.random() < 0.7 else _resize(rng, raw)
    return data, f"raw (old checksum): {what}"


def rehashed_corruption(rng, raw, parts):
    data, what = _byte_edit(rng, raw, parts) if rng.random() < 0.8 else _resize(rng, raw)
    if len(data) < DIGEST:
        return data, f"rehashed: {what} (too short to rehash)"
    return rehash(data), f"rehashed: {what}"


# --- header level ---------------------------------------------------------------------------
def _weird(rng: random.Random):
    return rng.choice(WEIRD_VALUES)


def wrong_type(rng, raw, parts):
    key = rng.choice(sorted(parts.header))
    parts.header[key] = value = _weird(rng)
    return parts.build(), f"header[{key!r}] = {value!r}"


def missing_key(rng, raw, parts):
    key = rng.choice(sorted(parts.header))
    del parts.header[key]
    return parts.build(), f"header[{key!r}] removed"


def _list_element(rng, parts, key: str, values) -> str:
    items = parts.header.get(key)
    if not isinstance(items, list) or not items:
        parts.header[key] = [rng.choice(values)]
        return f"header[{key!r}] = {parts.header[key]!r}"
    choice = rng.random()
    if choice < 0.6:
        i = rng.randrange(len(items))
        items[i] = rng.choice(values)
        return f"header[{key!r}][{i}] = {items[i]!r}"
    if choice < 0.8:
        items.pop(rng.randrange(len(items)))
        return f"header[{key!r}] one element shorter"
    items.append(rng.choice(values))
    return f"header[{key!r}] one element longer ({items[-1]!r})"


def counters(rng, raw, parts):
    """n_used, tokens_seen, tokens_evicted, history_len, capacity: negative, huge, wrong type."""
    capacity = parts.header.get("capacity", 64)
    cap = capacity if isinstance(capacity, int) else 64
    numbers = [-1, -(2**31), 0, cap, cap + 1, 2**31 - 1, 2**31, 2**63, 2**70, 1.5, "3", None, math.nan]
    key = rng.choice(["n_used", "n_used", "tokens_evicted", "tokens_seen", "history_len", "capacity"])
    if isinstance(parts.header.get(key), list):
        return parts.build(), _list_element(rng, parts, key, numbers)
    parts.header[key] = value = rng.choice(numbers)
    return parts.build(), f"header[{key!r}] = {value!r}"


def layer_lists(rng, raw, parts):
    """memory_used, layer_table, recent: layers or tokens out of range, wrong element types."""
    key = rng.choice(["memory_used", "layer_table", "recent", "recent"])
    values = [-2, -1, 0, 1, 10**6, 2**31, 2**40, -(2**40), "0", 1.5, None, [1], {"a": 0}]
    return parts.build(), _list_element(rng, parts, key, values)


def blob_table(rng, raw, parts):
    """The blob list: sizes changed (the data resized to match, or not), names, entry shapes."""
    i = rng.randrange(len(parts.blobs))
    name, data = parts.blobs[i]
    entries = parts.header["blobs"]
    choice = rng.randrange(6)
    if choice == 0:
        size = rng.choice([0, -1, len(data) - 1, len(data) + 1, len(data) * 2, 2**40, 1.5, "8", None])
        entries[i] = [name, size]
        if isinstance(size, int) and 0 <= size < 2**24 and rng.random() < 0.5:
            parts.blobs[i] = (name, (data * 2)[:size])
            return parts.build(), f"blob {name} resized to {size} (data too)"
        return parts.build(), f"blob {name} declared {size!r} bytes"
    if choice == 1:
        other = rng.choice([n for n, _ in parts.blobs] + ["", "k999", "policy.x", 7, None])
        entries[i] = [other, len(data)]
        return parts.build(), f"blob {name} renamed {other!r}"
    if choice == 2:
        entries[i] = rng.choice([[name], [name, len(data), 0], name, len(data), None, {}, [[name], 1]])
        return parts.build(), f"blob entry {i} = {entries[i]!r}"
    if choice == 3:
        j = rng.randrange(len(parts.blobs))
        entries[i], entries[j] = entries[j], entries[i]
        parts.blobs[i], parts.blobs[j] = parts.blobs[j], parts.blobs[i]
        return parts.build(), f"blobs {i} and {j} swapped"
    if choice == 4:
        del entries[i]
        del parts.blobs[i]
        return parts.build(), f"blob {name} removed"
    entries.append(list(entries[i]))
    parts.blobs.append(parts.blobs[i])
    return parts.build(), f"blob {name} duplicated"


def header_text(rng, raw, parts):
    """Header text that is not the expected JSON object."""
    choice = rng.randrange(7)
    texts = [
        b"[" * 60000,
        b'{"a":' * 12000,
        b"[]",
        b"17",
        b'"session"',
        b"null",
        json.dumps(parts.header).encode()[:-1],
    ]
    text = texts[choice]
    return parts.build(header_text=text), f"header text {text[:24]!r}... ({len(text)} bytes)"


def header_encoding(rng, raw, parts):
    """Valid JSON characters replaced by bytes that are not UTF-8, or the padding by NULs."""
    text = bytearray(json.dumps(parts.header).encode())
    if rng.random() < 0.5:
        pos = rng.randrange(len(text))
        text[pos : pos + 1] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])
        return parts.build(header_text=bytes(text)), f"header byte {pos} not UTF-8"
    padded = bytes(text) + b"\x00" * (parts.header_bytes - len(text))
    return parts.build(header_text=padded), "header padded with NULs"


def version(rng, raw, parts):
    parts.header["version"] = value = rng.choice([0, 2, "1", 1.0, -1, None, [1], True])
    return parts.build(), f"version = {value!r}"


# --- blob contents --------------------------------------------------------------------------
def positions(rng, raw, parts):
    """The slot tables (int32 positions): out of range, duplicated, holes, unused slots set."""
    i = next((k for k, (n, _) in enumerate(parts.blobs) if n == "positions"), None)
    if i is None:
        return rehash(raw), "no positions blob"
    name, data = parts.blobs[i]
    table = bytearray(data)
    n = len(table) // 4
    used = [k for k in range(n) if struct.unpack_from("<i", table, 4 * k)[0] >= 0] or [0]
    slot = rng.randrange(n) if rng.random() < 0.3 else rng.choice(used)
    choice = rng.randrange(5)
    if choice == 0:
        value = rng.choice([2**31 - 1, -2, -(2**31), 10**6, parts.header.get("tokens_seen", 0) + 5])
        what = f"slot {slot} = {value}"
    elif choice == 1:
        value = struct.unpack_from("<i", table, 4 * rng.choice(used))[0]
        what = f"slot {slot} duplicates position {value}"
    elif choice == 2:
        value = -1
        what = f"slot {slot} emptied (hole)"
    elif choice == 3:
        value = rng.randrange(0, 1 << 16)
        slot = rng.randrange(n)
        what = f"slot {slot} = {value} (maybe past n_used)"
    else:
        for k in range(n):
            struct.pack_into("<i", table, 4 * k, rng.randrange(-3, 3000))
        parts.blobs[i] = (name, bytes(table))
        return parts.build(), "every slot random"
    struct.pack_into("<i", table, 4 * slot, value)
    parts.blobs[i] = (name, bytes(table))
    return parts.build(), what


def tensor_values(rng, raw, parts):
    """K/V, index keys, memory or policy state filled with NaN, inf or huge values."""
    i = rng.randrange(len(parts.blobs))
    name, data = parts.blobs[i]
    if name == "positions" or len(data) < 4:
        return positions(rng, raw, parts)
    pattern = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x00\x7c\x00\x7c"])
    start = rng.randrange(0, len(data) // 4) * 4
    count = rng.choice([1, 16, len(data) // 4])
    block = (pattern * count)[: len(data) - start]
    parts.blobs[i] = (name, data[:start] + block + data[start + len(block) :])
    return parts.build(), f"blob {name}: {len(block) // 4} words = {pattern!r}"


def cache_types(rng, raw, parts):
    """The K/V cache types the header names: another type, an unknown name, wrong JSON types."""
    value = rng.choice(
        [
            {"k": "f16", "v": "f16"},
            {"k": "q8_0", "v": "q8_0"},
            {"k": "q4_0", "v": "q8_0"},
            {"k": "q3_K", "v": "f16"},
            {"k": 8, "v": 8},
            {"k": "q8_0"},
            {"k": ["q8_0"], "v": {}},
            {"k": "x" * 5000, "v": ""},
            "q8_0",
            _weird(rng),
        ]
    )
    parts.header["cache_types"] = value
    return parts.build(), f"cache_types = {value!r}"[:200]


MUTATORS = {
    "raw": raw_corruption,
    "rehashed": rehashed_corruption,
    "wrong_type": wrong_type,
    "missing_key": missing_key,
    "counters": counters,
    "layer_lists": layer_lists,
    "blob_table": blob_table,
    "header_text": header_text,
    "header_encoding": header_encoding,
    "version": version,
    "positions": positions,
    "tensor_values": tensor_values,
    "cache_types": cache_types,
}
WEIGHTS = {
    "raw": 2,
    "rehashed": 3,
    "wrong_type": 3,
    "missing_key": 1,
    "counters": 3,
    "layer_lists": 2,
    "blob_table": 3,
    "header_text": 1,
    "header_encoding": 1,
    "version": 1,
    "positions": 4,
    "tensor_values": 2,
    "cache_types": 1,
}


def mutate(rng: random.Random, raw: bytes) -> Mutation:
    name = rng.choices(sorted(MUTATORS), weights=[WEIGHTS[n] for n in sorted(MUTATORS)])[0]
    data, what = MUTATORS[name](rng, raw, SessionParts.parse(raw))
    return Mutation(data=data, what=f"{name}: {what}")

"""Mutators of a GGUF file's metadata region (key/value pairs and tensor descriptors).

Each mutator takes the original header and returns a new one: fixed-width numbers overwritten in
place (counts, dimensions, type codes, offsets, lengths, values), bytes flipped, or pairs and
descriptors inserted, retyped or removed (the header then changes size; ``gguf_files`` keeps
the tensor data where it belongs). Truncation cuts the finished file.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from .gguf_layout import ARRAY, SCALAR_FORMATS, STRING, Field, Layout, encode_kv, encode_string

U64_EDGES = [0, 1, 2**31, 2**32 - 1, 2**32, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
U32_EDGES = [0, 1, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
FLOAT_EDGES = [0.0, -0.0, -1.0, 1e-45, 1e30, -1e30, math.inf, -math.inf, math.nan]
BYTE_EDGES = [0x00, 0xFF, 0x7F, 0x80, 0x01]
MAX_SMALL_ARRAY = 64  # arrays longer than this are never copied or retyped whole


@dataclass(frozen=True)
class Base:
    """An unmutated GGUF file as the mutators see it."""

    layout: Layout
    header: bytes  # bytes [0, layout.header_end)
    file_size: int


@dataclass
class Mutation:
    header: bytes
    what: list[str]
    truncate_at: int | None = None  # cut the finished file to this many bytes


# --- numbers ---------------------------------------------------------------------------
def read_field(data: bytes, f: Field):
    return struct.unpack_from(f.fmt, data, f.offset)[0]


def pack_any(fmt: str, value) -> bytes:
    """``value`` stored with ``fmt``; integers wrap to the field's width (-1 → all ones)."""
    if fmt[-1] in "fd":
        if fmt[-1] == "f" and math.isfinite(value) and abs(value) > 3.4e38:
            value = math.copysign(math.inf, value)  # what a float32 overflow gives
        return struct.pack(fmt, value)
    bits = 8 * struct.calcsize(fmt)
    unsigned = {8: "<B", 16: "<H", 32: "<I", 64: "<Q"}[bits]
    return struct.pack(unsigned, int(value) & ((1 << bits) - 1))


def edge_value(rng: random.Random, fmt: str, original):
    if fmt[-1] in "fd":
        return rng.choice(FLOAT_EDGES + [original * rng.choice([-1, 2, 1e6])])
    edges = U64_EDGES if struct.calcsize(fmt) == 8 else U32_EDGES
    nearby = [original + 1, original - 1, original * 2, original // 2, original + rng.randint(2, 1000), -1]
    small = [rng.randrange(0, 9)]  # enum-like values (token types, flags, ggml types) in range
    return rng.choice(edges + nearby + small * 3 + [rng.getrandbits(8 * struct.calcsize(fmt))])


def set_field(data: bytearray, f: Field, value) -> str:
    before = read_field(data, f)
    data[f.offset : f.offset + f.width] = pack_any(f.fmt, value)
    return f"{f.role}{'[' + f.owner + ']' if f.owner else ''} {before} -> {read_field(data, f)}"


def _field(rng: random.Random, layout: Layout, *roles: str) -> Field | None:
    candidates = [f for role in roles for f in layout.fields.get(role, [])]
    return rng.choice(candidates) if candidates else None


def _span(rng: random.Random, base: Base) -> tuple[int, int]:
    """A region worth hitting: a small key/value pair, a tensor descriptor, or the whole header."""
    lay = base.layout
    small = [(kv.start, kv.end) for kv in lay.kvs if kv.end - kv.start < 4096]
    choice = rng.random()
    if choice < 0.4 and lay.tensors:
        t = rng.choice(lay.tensors)
        return t.start, t.end
    if choice < 0.8 and small:
        return rng.choice(small)
    return 0, len(base.header)


# --- in-place mutators -------------------------------------------------------------------
def bit_flips(rng, base):
    data = bytearray(base.header)
    start, end = _span(rng, base)
    spots = [rng.randrange(start, end) for _ in range(rng.randint(1, 8))]
    for pos in spots:
        data[pos] ^= 1 << rng.randrange(8)
    return bytes(data), f"bit flips at {spots}"


def byte_overwrite(rng, base):
    data = bytearray(base.header)
    start, end = _span(rng, base)
    pos, n = rng.randrange(start, end), rng.randint(1, 8)
    value = rng.choice(BYTE_EDGES)
    data[pos : pos + n] = bytes([value]) * len(data[pos : pos + n])
    return bytes(data), f"{n} bytes at {pos} = {value:#04x}"


def field_edge(rng, base):
    """Any structural number (picked by role first, so rare roles get hit too)."""
    data = bytearray(base.header)
    f = _field(rng, base.layout, rng.choice(sorted(base.layout.fields)))
    detail = set_field(data, f, edge_value(rng, f.fmt, read_field(data, f))) if f else "no field"
    return bytes(data), detail


def _set_role(rng, base, *roles, values=None):
    data = bytearray(base.header)
    f = _field(rng, base.layout, *roles)
    if f is None:
        return bytes(data), f"no {roles}"
    original = read_field(data, f)
    value = rng.choice(values(original)) if values else edge_value(rng, f.fmt, original)
    detail = set_field(data, f, value)
    return bytes(data), detail


def counts(rng, base):
    return _set_role(
        rng,
        base,
        "n_tensors",
        "n_kv",
        values=lambda n: [
            0,
            n - 1,
            n + 1,
            n + 2,
            n - 3,
            2 * n,
            2**20,
            (1 << 24) - 1,
            1 << 24,
            2**40,
            2**64 - 1,
        ],
    )


def tensor_dims(rng, base):
    if rng.random() < 0.25:
        return _set_role(rng, base, "tensor.n_dims", values=lambda n: [0, 1, 3, 4, 5, 8, 255, 2**32 - 1])
    return _set_role(
        rng,
        base,
        "tensor.dim",
        values=lambda d: [
            0,
            1,
            d + 1,
            d - 1,
            2 * d,
            d * 32,
            2**31,
            2**32,
            2**40,
            2**62,
            2**63 - 1,
            2**63,
            2**64 - 1,
        ],
    )


def tensor_type(rng, base):
    return _set_role(
        rng,
        base,
        "tensor.type",
        values=lambda t: [
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            8,
            10,
            12,
            14,
            16,
            20,
            24,
            30,
            31,
            38,
            39,
            40,
            64,
            255,
            2**31,
            2**32 - 1,
        ],
    )


def kv_type(rng, base):
    return _set_role(
        rng, base, "kv.type", "kv.array_type", values=lambda t: list(range(14)) + [100, 2**31, 2**32 - 1]
    )


def tensor_offset(rng, base):
    lay = base.layout
    data_size = base.file_size - lay.data_offset
    offsets = sorted(t.offset for t in lay.tensors)
    return _set_role(
        rng,
        base,
        "tensor.offset",
        values=lambda o: [
            data_size,
            data_size + lay.alignment,
            data_size - lay.alignment,
            o + 1,
            o + lay.alignment,
            rng.choice(offsets),
            offsets[-1],
            2**63,
            2**64 - lay.alignment,
            2**64 - 1,
            data_size * 2,
        ],
    )


def string_length(rng, base):
    if rng.random() < 0.3:
        return _string_element_length(rng, base)
    return _set_role(
        rng,
        base,
        "kv.key_length",
        "kv.string_length",
        "tensor.name_length",
        values=lambda n: [0, n - 1, n + 1, n + 7, 2**16, 2**31, 2**32, 2**63, 2**64 - 1],
    )


def _string_element_length(rng, base):
    """The length prefix of one element of a string array (vocabulary, merges)."""
    arrays = [kv for kv in base.layout.kvs if kv.vtype == ARRAY and kv.arr_type == STRING and kv.arr_count]
    if not arrays:
        return base.header, "no string array"
    kv = rng.choice(arrays)
    pos, index = kv.elements_start, rng.randrange(min(kv.arr_count, 2000))
    for _ in range(index):
        pos += 8 + struct.unpack_from("<Q", base.header, pos)[0]
    f = Field(pos, "<Q", "kv.string_element_length", f"{kv.key}[{index}]")
    data = bytearray(base.header)
    detail = set_field(data, f, rng.choice([0, 1, 2**20, 2**32, 2**63, 2**64 - 1, 200]))
    return bytes(data), detail


def array_count(rng, base):
    return _set_role(
        rng,
        base,
        "kv.array_count",
        values=lambda n: [0, 1, n - 1, n + 1, 2 * n, 2**28, 2**32, 2**60, 2**64 - 1],
    )


def kv_value(rng, base):
    """A scalar value (block count, head count, epsilon, context length, ...) at an edge."""
    return _set_role(rng, base, "kv.value")


def array_element(rng, base):
    """One element of a numeric array (token types, layer lists, per-layer counts) at an edge."""
    arrays = [
        kv for kv in base.layout.kvs if kv.vtype == ARRAY and kv.arr_type in SCALAR_FORMATS and kv.arr_count
    ]
    if not arrays:
        return base.header, "no numeric array"
    kv = rng.choice(arrays)
    fmt = SCALAR_FORMATS[kv.arr_type]
    index = rng.randrange(kv.arr_count)
    f = Field(kv.elements_start + index * struct.calcsize(fmt), fmt, "kv.element", f"{kv.key}[{index}]")
    data = bytearray(base.header)
    detail = set_field(data, f, edge_value(rng, fmt, read_field(data, f)))
    return bytes(data), detail


def string_bytes(rng, base):
    """Invalid UTF-8 or NULs inside a key, a string value or a tensor name (same length)."""
    lay = base.layout
    spans = [(t.name_start, t.start + 8 + len(t.name.encode())) for t in lay.tensors]
    spans += [(kv.start + 8, kv.start + 8 + len(kv.key.encode())) for kv in lay.kvs]
    spans += [
        (f.offset + 8, f.offset + 8 + read_field(base.header, f))
        for f in lay.fields.get("kv.string_length", [])
    ]
    spans = [(a, b) for a, b in spans if b > a]
    start, end = rng.choice(spans)
    pos = rng.randrange(start, end)
    junk = rng.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b"\xfe\xfe"])
    n = min(len(junk), end - pos)
    data = bytearray(base.header)
    data[pos : pos + n] = junk[:n]
    return bytes(data), f"bytes {junk[:n]!r} at {pos}"


def transpose_tensor(rng, base):
    matrices = [t for t in base.layout.tensors if len(t.dims) == 2 and t.dims[0] != t.dims[1]]
    if not matrices:
        return base.header, "no matrix"
    t = rng.choice(matrices)
    dims_at = t.end - 12 - 16  # the two u64 dims sit before the type (u32) and offset (u64)
    data = bytearray(base.header)
    data[dims_at : dims_at + 16] = struct.pack("<QQ", t.dims[1], t.dims[0])
    return bytes(data), f"tensor {t.name} dims swapped"


def rename_duplicate_tensor(rng, base):
    """A tensor renamed to another tensor's name of the same length: a duplicate name."""
    by_length: dict[int, list] = {}
    for t in base.layout.tensors:
        by_length.setdefault(len(t.name.encode()), []).append(t)
    groups = [g for g in by_length.values() if len(g) > 1]
    if not groups:
        return _insert_tensor_copy(rng, base)
    a, b = rng.sample(rng.choice(groups), 2)
    data = bytearray(base.header)
    data[a.name_start : a.name_start + len(a.name.encode())] = b.name.encode()
    return bytes(data), f"tensor {a.name} renamed {b.name} (duplicate)"


def rename_duplicate_key(rng, base):
    by_length: dict[int, list] = {}
    for kv in base.layout.kvs:
        by_length.setdefault(len(kv.key.encode()), []).append(kv)
    groups = [g for g in by_length.values() if len(g) > 1]
    if not groups or rng.random() < 0.5:
        return insert_duplicate_key(rng, base)
    a, b = rng.sample(rng.choice(groups), 2)
    data = bytearray(base.header)
    data[a.start + 8 : a.start + 8 + len(a.key.encode())] = b.key.encode()
    return bytes(data), f"key {a.key} renamed {b.key} (duplicate)"


# --- mutators that change the header's size -----------------------------------------------
def _small_kvs(base):
    return [kv for kv in base.layout.kvs if kv.vtype != ARRAY or kv.arr_count <= MAX_SMALL_ARRAY]


def _add_to_count(data: bytearray, offset: int, delta: int) -> None:
    (n,) = struct.unpack_from("<Q", data, offset)
    data[offset : offset + 8] = struct.pack("<Q", n + delta)


def insert_duplicate_key(rng, base):
    """A copy of a small pair (maybe with another value) appended after the others; n_kv + 1."""
    kv = rng.choice(_small_kvs(base))
    pair = base.header[kv.start : kv.end]
    if rng.random() < 0.5:
        pair = encode_kv(kv.key, *_other_value(rng, kv.vtype))
    head = bytearray(base.header)
    _add_to_count(head, 16, 1)
    end = base.layout.kv_end
    return bytes(head[:end]) + pair + bytes(head[end:]), f"duplicate key {kv.key} appended"


def _insert_tensor_copy(rng, base):
    t = rng.choice(base.layout.tensors)
    head = bytearray(base.header)
    _add_to_count(head, 8, 1)
    desc = base.header[t.start : t.end]
    return bytes(head) + desc, f"duplicate tensor descriptor {t.name} appended"


def _other_value(rng, vtype: int):
    """(type, value) of a different kind than ``vtype``, plausible enough to be read."""
    options = [
        (4, rng.choice([0, 1, 7, 2**31, 2**32 - 1])),
        (5, -1),
        (10, 2**63),
        (6, rng.choice(FLOAT_EDGES)),
        (7, 1),
        (STRING, rng.choice(["", "12", "llama", "\u2581x" * 3, "none"])),
        (ARRAY, (4, [1, 2, 3])),
        (ARRAY, (STRING, ["a", "b"])),
        (ARRAY, (6, [])),
        (12, 0.5),
    ]
    return rng.choice([o for o in options if o[0] != vtype] or options)


def retype_key(rng, base):
    """A pair rewritten with the same key and a value of another type (a string block count...)."""
    kv = rng.choice(_small_kvs(base))
    vtype, value = _other_value(rng, kv.vtype)
    pair = encode_kv(kv.key, vtype, value)
    return base.header[: kv.start] + pair + base.header[
        kv.end :
    ], f"key {kv.key} retyped to {vtype} {value!r}"


def remove_key(rng, base):
    kv = rng.choice(_small_kvs(base))
    head = bytearray(base.header)
    _add_to_count(head, 16, -1)
    return bytes(head[: kv.start]) + bytes(head[kv.end :]), f"key {kv.key} removed"


def remove_tensor(rng, base):
    t = rng.choice(base.layout.tensors)
    head = bytearray(base.header)
    _add_to_count(head, 8, -1)
    return bytes(head[: t.start]) + bytes(head[t.end :]), f"tensor {t.name} removed"


def rename_tensor(rng, base):
    """A tensor renamed to something no architecture expects (a different length)."""
    t = rng.choice(base.layout.tensors)
    new = rng.choice([t.name + ".x", t.name[:-1], "", "blk.999.attn_q.weight", "x" * 70])
    return (
        base.header[: t.start] + encode_string(new) + base.header[t.start + 8 + len(t.name.encode()) :],
        f"tensor {t.name} renamed {new!r}",
    )


MUTATORS = {
    "bit_flips": bit_flips,
    "byte_overwrite": byte_overwrite,
    "field_edge": field_edge,
    "counts": counts,
    "tensor_dims": tensor_dims,
    "tensor_type": tensor_type,
    "kv_type": kv_type,
    "tensor_offset": tensor_offset,
    "string_length": string_length,
    "array_count": array_count,
    "kv_value": kv_value,
    "array_element": array_element,
    "string_bytes": string_bytes,
    "transpose_tensor": transpose_tensor,
    "duplicate_tensor": rename_duplicate_tensor,
    "duplicate_key": rename_duplicate_key,
    "retype_key": retype_key,
    "remove_key": remove_key,
    "remove_tensor": remove_tensor,
    "rename_tensor": rename_tensor,
}
# values the engine interprets (hyper-parameters, IndexMem sizes, types) find more than random bytes
WEIGHTS = {name: 1 for name in MUTATORS} | {
    "kv_value": 4,
    "retype_key": 3,
    "array_element": 2,
    "field_edge": 2,
}
TRUNCATE = "truncate"


def mutate(rng: random.Random, base: Base) -> Mutation:
    """One to three mutators applied in turn, or (one case in eight) a truncated file."""
    if rng.random() < 0.125:
        in_header = rng.random() < 0.5
        cut = rng.randrange(0, len(base.header) if in_header else base.file_size)
        return Mutation(header=base.header, what=[f"{TRUNCATE} at {cut}"], truncate_at=cut)
    n = 1 if rng.random() < 0.75 else rng.randint(2, 3)
    what, current = [], base
    for _ in range(n):
        name = rng.choices(sorted(MUTATORS), weights=[WEIGHTS[m] for m in sorted(MUTATORS)])[0]
        header, detail = MUTATORS[name](rng, current)
        what.append(f"{name}: {detail}")
        current = Base(layout=base.layout, header=header, file_size=base.file_size)
        if len(header) != len(base.header):
            break  # the original layout's offsets no longer apply
    return Mutation(header=current.header, what=what)


# --- directed edits (regression cases of findings) -----------------------------------------
def set_value(base: Base, key: str, value) -> Mutation:
    """``key``'s scalar value overwritten in place, keeping its type."""
    f = next(f for f in base.layout.fields["kv.value"] if f.owner == key)
    data = bytearray(base.header)
    detail = set_field(data, f, value)
    return Mutation(header=bytes(data), what=[detail])


def set_typed_value(base: Base, key: str, vtype: int, value) -> Mutation:
    """``key``'s pair re-encoded with another type and value (appended if the file lacks it)."""
    what = [f"{key} = {value!r} (type {vtype})"]
    kv = next((kv for kv in base.layout.kvs if kv.key == key), None)
    if kv is None:
        head = bytearray(base.header)
        _add_to_count(head, 16, 1)
        end = base.layout.kv_end
        return Mutation(
            header=bytes(head[:end]) + encode_kv(key, vtype, value) + bytes(head[end:]), what=what
        )
    header = base.header[: kv.start] + encode_kv(key, vtype, value) + base.header[kv.end :]
    return Mutation(header=header, what=what)


def without_key(base: Base, key: str) -> Mutation:
    kv = next(kv for kv in base.layout.kvs if kv.key == key)
    head = bytearray(base.header)
    _add_to_count(head, 16, -1)
    return Mutation(header=bytes(head[: kv.start]) + bytes(head[kv.end :]), what=[f"key {key} removed"])


def set_tensor_type(base: Base, name: str, ggml_type: int) -> Mutation:
    f = next(f for f in base.layout.fields["tensor.type"] if f.owner == name)
    data = bytearray(base.header)
    detail = set_field(data, f, ggml_type)
    return Mutation(header=bytes(data), what=[detail])

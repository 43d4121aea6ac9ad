"""Where every field of a (valid) GGUF header sits, so mutators can aim at real fields.

A pure-Python parse of the metadata region: the counts, each key/value pair and each tensor
descriptor, with the byte offset and width of every number in them. Only the original,
unmutated files are parsed here; the engine's own reader is what the mutated ones go through.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

STRING, ARRAY = 8, 9
SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class Field:
    offset: int
    fmt: str  # struct format of the number stored there
    role: str  # what it is: "n_kv", "kv.type", "tensor.dim", ...
    owner: str = ""  # the key or tensor it belongs to

    @property
    def width(self) -> int:
        return struct.calcsize(self.fmt)


@dataclass
class KV:
    key: str
    start: int  # first byte of the pair (its key length)
    end: int
    vtype: int
    value_start: int  # first byte after the type code
    arr_type: int | None = None
    arr_count: int = 0
    elements_start: int = 0


@dataclass
class TensorDesc:
    name: str
    start: int
    end: int
    name_start: int  # first byte of the name itself (after its length)
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section


@dataclass
class Layout:
    version: int
    kvs: list[KV]
    tensors: list[TensorDesc]
    header_end: int  # end of the last tensor descriptor
    alignment: int
    fields: dict[str, list[Field]] = field(default_factory=dict)

    @property
    def data_offset(self) -> int:
        return align(self.header_end, self.alignment)

    @property
    def kv_end(self) -> int:
        return self.kvs[-1].end if self.kvs else 24

    def add(self, f: Field) -> None:
        self.fields.setdefault(f.role, []).append(f)


def align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


class _Cursor:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def number(self, fmt: str) -> int | float:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.number("<Q")
        raw = self.data[self.pos : self.pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the parsed region")
        self.pos += n
        return raw.decode("utf-8", "replace")


def parse_layout(data: bytes) -> Layout:
    """Parse the header of a valid GGUF file held (at least its header) in ``data``."""
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    layout = Layout(version=version, kvs=[], tensors=[], header_end=0, alignment=DEFAULT_ALIGNMENT)
    layout.add(Field(8, "<Q", "n_tensors"))
    layout.add(Field(16, "<Q", "n_kv"))
    cur = _Cursor(data, 24)
    for _ in range(n_kv):
        layout.kvs.append(_parse_kv(cur, layout))
    for _ in range(n_tensors):
        layout.tensors.append(_parse_tensor(cur, layout))
    layout.header_end = cur.pos
    for kv in layout.kvs:
        if kv.key == "general.alignment" and kv.vtype == 4:
            layout.alignment = struct.unpack_from("<I", data, kv.value_start)[0]
    return layout


def _parse_kv(cur: _Cursor, layout: Layout) -> KV:
    start = cur.pos
    layout.add(Field(cur.pos, "<Q", "kv.key_length"))
    key = cur.string()
    layout.add(Field(cur.pos, "<I", "kv.type", key))
    vtype = cur.number("<I")
    kv = KV(key=key, start=start, end=0, vtype=vtype, value_start=cur.pos)
    if vtype == ARRAY:
        layout.add(Field(cur.pos, "<I", "kv.array_type", key))
        kv.arr_type = cur.number("<I")
        layout.add(Field(cur.pos, "<Q", "kv.array_count", key))
        kv.arr_count = cur.number("<Q")
        kv.elements_start = cur.pos
        for _ in range(kv.arr_count):
            _parse_value(cur, layout, kv.arr_type, key, element=True)
    else:
        _parse_value(cur, layout, vtype, key, element=False)
    kv.end = cur.pos
    return kv


def _parse_value(cur: _Cursor, layout: Layout, vtype: int, key: str, element: bool) -> None:
    """Array elements are not listed as fields (a vocabulary has 10^5 of them): mutators find
    them from the pair's ``elements_start``."""
    if vtype == STRING:
        if element:
            n = cur.number("<Q")
            cur.pos += n
        else:
            layout.add(Field(cur.pos, "<Q", "kv.string_length", key))
            cur.string()
        return
    fmt = SCALAR_FORMATS.get(vtype)
    if fmt is None:
        raise ValueError(f"key {key}: unknown value type {vtype}")
    if not element:
        layout.add(Field(cur.pos, fmt, "kv.value", key))
    cur.pos += struct.calcsize(fmt)


def _parse_tensor(cur: _Cursor, layout: Layout) -> TensorDesc:
    start = cur.pos
    layout.add(Field(cur.pos, "<Q", "tensor.name_length"))
    name = cur.string()
    name_start = cur.pos - len(name.encode())
    layout.add(Field(cur.pos, "<I", "tensor.n_dims", name))
    n_dims = cur.number("<I")
    dims = []
    for _ in range(n_dims):
        layout.add(Field(cur.pos, "<Q", "tensor.dim", name))
        dims.append(cur.number("<Q"))
    layout.add(Field(cur.pos, "<I", "tensor.type", name))
    ggml_type = cur.number("<I")
    layout.add(Field(cur.pos, "<Q", "tensor.offset", name))
    offset = cur.number("<Q")
    return TensorDesc(
        name=name,
        start=start,
        end=cur.pos,
        name_start=name_start,
        dims=tuple(dims),
        ggml_type=ggml_type,
        offset=offset,
    )


def encode_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def encode_kv(key: str, vtype: int, value) -> bytes:
    """One key/value pair as GGUF stores it (scalars, strings, and arrays given as (type, list))."""
    out = encode_string(key) + struct.pack("<I", vtype)
    if vtype == STRING:
        return out + encode_string(value)
    if vtype == ARRAY:
        arr_type, items = value
        out += struct.pack("<IQ", arr_type, len(items))
        for item in items:
            out += encode_string(item) if arr_type == STRING else struct.pack(SCALAR_FORMATS[arr_type], item)
        return out
    return out + struct.pack(SCALAR_FORMATS[vtype], value)

"""Session files: the whole bounded state of an engine, saved and restored exactly.

A session holds what the next token depends on: every layer's K/V cache and slot table, the
IndexMem index keys and latent memory, the eviction policy's per-slot state, the counters, and
the conversation's identity (its token count, a sha256 of its tokens, the last tokens). Sizes
depend on the cache capacity only, never on how long the conversation was.

Layout: magic, a little-endian u32 header length, the JSON header, the binary blobs the header
lists (name, byte size) in order, and a sha256 of everything before it. Loading checks the
magic, version, checksum, the model and IndexMem identity, the cache geometry and every blob
size before a byte reaches the engine's buffers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import IndexmemError
from ..ggml_ops.bindings import C
from .history import HASH_MODULUS, RECENT, History

MAGIC = b"IMSESSN\0"
VERSION = 2
HEADER_BYTES = 1 << 16  # the JSON header is padded to this, so the file size never varies
LEGACY_CACHE_TYPES = {"k": "f16", "v": "f16"}  # sessions saved before the header named them


class SessionError(IndexmemError):
    """A session file that cannot be restored into this engine (corrupt, or another model)."""


def _tensors(engine) -> list[tuple[str, int]]:
    out = []
    for il, layer in enumerate(engine.cache.layers):
        out += [(f"k{il}", layer.k), (f"v{il}", layer.v)]
    state = engine.cache.indexmem
    if state is not None:
        out += [(f"idx{il}", t) for il, t in state.keys.items()]
        out += [(f"mem_m{il}", t) for il, t in state.mem_m.items()]
        out += [(f"mem_b{il}", t) for il, t in state.mem_b.items()]
    return out


def _policy_arrays(engine) -> dict[str, np.ndarray]:
    evictor = engine.runner.evictor
    try:
        return evictor.policy.state_arrays() if evictor else {}
    except NotImplementedError as exc:
        raise SessionError(f"sessions are not available with this policy: {exc}") from exc


def identity(engine) -> dict:
    """What a session must agree on with the engine it is loaded into."""
    cache, cfg = engine.cache, engine.budget_config
    return {
        "model_fingerprint": engine.model_fingerprint,
        "indexmem_fingerprint": engine.indexmem_fingerprint,
        "memory": engine.cache.indexmem is not None and bool(engine.cache.indexmem.memory_layers),
        "budget_config": {
            "policy": cfg.policy,
            "budget": cfg.budget,
            "sinks": cfg.sinks,
            "window": cfg.window,
            "tau": cfg.tau,
            "params": cfg.params,
        },
        "capacity": cache.capacity,
        "cache_types": cache.types.as_dict(),
        "layer_table": list(cache.layer_table),
        "bounded": engine.runner.evictor is not None,
    }


def save(engine, path: str | Path) -> None:
    """Stream the state into the file one tensor at a time, so that saving needs no more memory
    than the largest tensor (a process that saves often keeps a flat footprint)."""
    engine.runner.flush()  # queued memory writes and moves land in the buffers first
    recall = engine.recall
    if recall is not None and any(recall.store.live(il) for il in recall.layers):
        # the store grows with the conversation, and a session file has a fixed size
        raise SessionError(
            "a session cannot be saved while the recall tier holds evicted tokens: session files "
            "have a fixed size and the store grows with the conversation (save before it fills, or "
            "load the engine without recall)"
        )
    cache, history = engine.cache, engine.feeder.history
    recent = np.full(RECENT, -1, dtype=np.int32)
    last = np.asarray(history.recent(RECENT), dtype=np.int32)
    recent[RECENT - len(last) :] = last
    positions = np.stack([t.positions for t in cache.tables]).tobytes()
    tensors = _tensors(engine)
    policy = {
        f"policy.{name}": np.ascontiguousarray(arr).tobytes() for name, arr in _policy_arrays(engine).items()
    }
    sizes = (
        [("positions", len(positions))]
        + [(name, C.ggml_nbytes(t)) for name, t in tensors]
        + [(name, len(data)) for name, data in policy.items()]
    )
    header = {
        "version": VERSION,
        **identity(engine),
        "n_used": [t.n_used for t in cache.tables],
        "tokens_seen": cache.tokens_seen,
        "tokens_evicted": list(cache.tokens_evicted),
        "memory_used": sorted(cache.indexmem.memory_used) if cache.indexmem else [],
        "history_len": len(history),
        "history_hash": history.hash,
        "recent": recent.tolist(),
        "unfed": list(engine.feeder.unfed),
        "position_shift": cache.position_shift,
        "blobs": [[name, size] for name, size in sizes],
    }
    head = json.dumps(header).encode()
    if len(head) > HEADER_BYTES:
        raise SessionError(f"session header of {len(head)} bytes exceeds {HEADER_BYTES}")
    buf = np.empty(max((size for _, size in sizes), default=0), dtype=np.uint8)
    digest = hashlib.sha256()
    with atomic_file(path) as f:

        def put(data) -> None:
            digest.update(data)
            f.write(data)

        put(MAGIC + struct.pack("<I", HEADER_BYTES) + head.ljust(HEADER_BYTES))
        put(positions)
        for _name, t in tensors:
            n = C.ggml_nbytes(t)
            C.ggml_backend_tensor_get(t, buf.ctypes.data, 0, n)
            put(memoryview(buf)[:n])
        for data in policy.values():
            put(data)
        f.write(digest.digest())


def load(engine, path: str | Path) -> None:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"{path}: cannot read the session file ({exc.strerror})") from exc
    header, blobs = _parse(raw, path)
    header.setdefault("cache_types", LEGACY_CACHE_TYPES)
    mine = identity(engine)
    for key, value in mine.items():
        if key == "memory" and header.get(key) is not value:
            saved, flag = (
                ("with", "memory=True (--memory)")
                if header.get(key)
                else ("without", "memory=False (--no-memory)")
            )
            raise SessionError(
                f"{path}: saved {saved} the latent memory; load it into an engine made with {flag}"
            )
        if key == "cache_types" and header[key] != value:
            raise SessionError(f"{path}: {_cache_types_mismatch(header[key], value)}")
        if header.get(key) != value:
            what = "model" if key == "model_fingerprint" else key.replace("_", " ")
            raise SessionError(
                f"{path}: saved with another {what} than this engine has ({header.get(key)!r} vs {value!r})"
            )
    expected = _expected_sizes(engine)
    if [name for name, _ in header["blobs"]] != list(expected) or any(
        size != expected[name] for name, size in header["blobs"]
    ):
        raise SessionError(f"{path}: its buffers do not match this engine's cache")
    cache = engine.cache
    n_tables = len(cache.tables)
    positions = np.frombuffer(blobs["positions"], dtype=np.int32).reshape(n_tables, cache.capacity)
    n_used = header["n_used"]
    if (
        len(n_used) != n_tables
        or any(not 0 <= u <= cache.capacity for u in n_used)
        or (positions < -1).any()
        or len(header["tokens_evicted"]) != cache.n_layer
    ):
        raise SessionError(f"{path}: inconsistent slot tables")
    memory_layers = cache.indexmem.memory_layers if cache.indexmem is not None else []
    if not set(header["memory_used"]) <= set(memory_layers):
        raise SessionError(
            f"{path}: memory written in layers {sorted(header['memory_used'])}, but this "
            f"engine's memory layers are {memory_layers}"
        )
    _check_conversation(header, engine.hparams.n_vocab, path)
    # everything is validated: from here on the engine's state is replaced
    engine.runner.invalidate()
    cache.pending_moves, cache.pending_evicted = {}, {}
    for table, pos, u in zip(cache.tables, positions, n_used):
        table.positions[:] = pos
        table.n_used = int(u)
    for name, t in _tensors(engine):
        data = np.frombuffer(blobs[name], dtype=np.uint8)
        C.ggml_backend_tensor_set(t, data.ctypes.data, 0, data.nbytes)
    if engine.runner.evictor:
        engine.runner.evictor.policy.load_state_arrays(
            {name[7:]: blobs[name] for name in blobs if name.startswith("policy.")}
        )
    cache.tokens_seen = int(header["tokens_seen"])
    cache.tokens_evicted = [int(x) for x in header["tokens_evicted"]]
    if cache.indexmem is not None:
        cache.indexmem.memory_used = set(header["memory_used"])
    cache.position_shift = int(header["position_shift"])
    engine.feeder.history = History(
        header["history_len"], header["history_hash"], [t for t in header["recent"] if t >= 0]
    )
    engine.feeder.unfed = [int(t) for t in header["unfed"]]
    if engine.recall is not None:
        engine.recall.clear()  # what the store held belonged to the conversation replaced


def _cache_types_mismatch(saved, mine: dict) -> str:
    if isinstance(saved, dict) and isinstance(saved.get("k"), str) and isinstance(saved.get("v"), str):
        k, v = saved["k"][:16], saved["v"][:16]
        return (
            f"saved from a K/V cache of types {k}/{v}, this engine's is {mine['k']}/{mine['v']}: "
            f"load it into an engine made with cache_type_k={k!r}, cache_type_v={v!r} (-ctk {k} -ctv {v})"
        )
    return "its cache types are unreadable"


def _check_conversation(header: dict, n_vocab: int, path: Path) -> None:
    def token_list(key, most):
        v = header.get(key)
        return (
            isinstance(v, list)
            and len(v) <= most
            and all(isinstance(t, int) and not isinstance(t, bool) and -1 <= t < n_vocab for t in v)
        )

    if not (
        _is_count(header.get("history_len"))
        and _is_count(header.get("position_shift"))
        and _is_count(header.get("history_hash"), HASH_MODULUS)
        and token_list("recent", RECENT)
        and token_list("unfed", 1)
        and -1 not in header["unfed"]
    ):
        raise SessionError(f"{path}: the conversation record is inconsistent")


def _expected_sizes(engine) -> dict[str, int]:
    cache = engine.cache
    sizes = {"positions": 4 * len(cache.tables) * cache.capacity}
    sizes.update({name: C.ggml_nbytes(t) for name, t in _tensors(engine)})
    sizes.update({f"policy.{name}": arr.nbytes for name, arr in _policy_arrays(engine).items()})
    return sizes


def _parse(raw: bytes, path: Path) -> tuple[dict, dict[str, memoryview]]:
    raw = memoryview(raw)  # blobs are views into the file's bytes, not copies
    if len(raw) < len(MAGIC) + 4 + 32 or raw[: len(MAGIC)] != MAGIC:
        raise SessionError(f"{path}: not an indexmem session file")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise SessionError(f"{path}: checksum mismatch (the file is corrupt or truncated)")
    (n_head,) = struct.unpack("<I", body[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n_head != HEADER_BYTES or start + n_head > len(body):
        raise SessionError(f"{path}: bad header length")
    try:
        header = json.loads(bytes(body[start : start + n_head]))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or nesting deep enough to recurse out
        raise SessionError(f"{path}: unreadable header ({str(exc)[:200]})") from exc
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise SessionError(
            f"{path}: session format version {header.get('version') if isinstance(header, dict) else '?'}"
            f" is not {VERSION}"
        )
    _check_fields(header, path)
    blobs, at = {}, start + n_head
    for name, size in header["blobs"]:
        if at + size > len(body):
            raise SessionError(f"{path}: blob {name!r} runs past the end of the file")
        blobs[name] = body[at : at + size]
        at += size
    if at != len(body):
        raise SessionError(f"{path}: {len(body) - at} unexpected bytes after the buffers")
    return header, blobs


_COUNT_LIMIT = 1 << 48  # far beyond any conversation; larger counts are corruption (len() overflows)


def _is_count(v, below: int = _COUNT_LIMIT) -> bool:
    """A JSON integer in [0, below) (JSON booleans are ints to Python: not counts)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < below


def _check_fields(header: dict, path: Path) -> None:
    """The header fields ``load`` reads as numbers have the right JSON types and signs."""

    def integers(v):
        return isinstance(v, list) and all(_is_count(x) for x in v)

    def blob_table(v):
        return isinstance(v, list) and all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _is_count(e[1]) for e in v
        )

    checks = {
        "blobs": blob_table,
        "n_used": integers,
        "tokens_seen": _is_count,
        "tokens_evicted": integers,
        "memory_used": integers,
        "history_len": _is_count,
    }
    bad = [key for key, ok in checks.items() if not ok(header.get(key))]
    if bad:
        raise SessionError(f"{path}: header fields {', '.join(bad)} are missing or malformed")

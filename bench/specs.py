"""How benchmarks name a cache configuration: a policy, optionally with IndexMem's memory.

``full`` (no eviction), ``indexmem`` (indexer + latent memory), ``indexmem-nomem`` (indexer
only), any heuristic (``snapkv``, ``tova``, ...) and ``<heuristic>+mem`` (the heuristic with the
latent memory behind it); ``indexmem+recall`` and ``indexmem-nomem+recall`` add the recall tier
(its store on disk), ``+recallN`` with at most N tokens recalled per layer and compression, and
``-end`` after either (``+recall16-end``) only at a prompt's end and in decoding
(``recall_at="prompt_end"``), ``-end-att`` ranked there by the model's attention
(``recall_score="attention"``), ``-step`` swapped in at every step by the step's own attention
(``recall_at="each_step"``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..convert import schema as S
from ..engine.indexmem import find_indexmem
from ..engine.loader import open_gguf
from ..engine.policies import POLICIES
from ..engine.registry import sha256_of

HEURISTICS = ("streaming", "h2o", "snapkv", "tova", "keydiff", "random")


def engine_options(spec: str, budget: int, indexmem=None, window: int | None = None) -> dict:
    """Engine.load keyword arguments for ``spec`` with ``budget`` tokens per layer (ignored by
    ``full``). ``indexmem``: a sidecar path, or None for the modules merged or shipped with the
    model. ``window``: recent tokens every evicting configuration keeps (None: the engine's
    default)."""
    if spec == "full":
        return dict(policy="full", indexmem=False)
    recall = re.fullmatch(r"(indexmem|indexmem-nomem)\+recall(\d*)(-end|-step)?(-att)?", spec)
    if recall:
        opts = dict(engine_options(recall[1], budget, indexmem, window), recall="disk")
        if recall[2]:
            opts["recall_per_step"] = int(recall[2])
        if recall[3] == "-step":
            if recall[4]:
                raise ValueError(f"{spec!r}: -step always ranks by attention (+recall-step)")
            opts.update(recall_at="each_step", recall_score="attention")
        elif recall[3]:
            opts["recall_at"] = "prompt_end"
        if recall[4]:
            if not recall[3]:
                raise ValueError(f"{spec!r}: attention ranks at a prompt's end only (+recall-end-att)")
            opts["recall_score"] = "attention"
        return opts
    policy, memory = spec, False
    if spec == "indexmem":
        memory = True
    elif spec == "indexmem-nomem":
        policy = "indexmem"
    elif spec.endswith("+mem"):
        policy, memory = spec[:-4], True
    if policy not in POLICIES or policy == "full":
        raise ValueError(
            f"unknown configuration {spec!r}: use full, indexmem, indexmem-nomem (either with "
            f"+recall, +recallN, and -end, -end-att or -step after either), a policy ({', '.join(HEURISTICS)}) or <policy>+mem"
        )
    uses_modules = memory or policy == "indexmem"
    opts = dict(policy=policy, memory=memory, budget=budget, indexmem=indexmem if uses_modules else False)
    if window is not None:
        opts["window"] = window
    return opts


def recall_settings(spec: str) -> dict:
    """What a row of a recall configuration records of the tier's settings (they change what it
    measures); nothing for the others, whose rows stay as they were."""
    opts = engine_options(spec, 1)
    if opts.get("recall") is None:
        return {}
    from ..engine.recall import N_QUERIES
    from ..engine.recall_step import STEP_THRESHOLD, default_per_step

    at = opts.get("recall_at", "every_chunk")
    settings = {"per_step": opts.get("recall_per_step", default_per_step(at)), "n_queries": N_QUERIES}
    if at == "each_step":
        settings["threshold"] = STEP_THRESHOLD
    if "recall_at" in opts:  # rows from before these options stay as they were
        settings["at"] = opts["recall_at"]
    if "recall_score" in opts:
        settings["score"] = opts["recall_score"]
    return {"recall": settings}


def parse_specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    for s in specs:
        engine_options(s, 500)  # raises on a bad name before any model is loaded
    return specs


def uses_modules(spec: str) -> bool:
    """Whether the configuration runs IndexMem's trained modules (indexer or memory)."""
    return engine_options(spec, 1)["indexmem"] is not False


@dataclass(frozen=True)
class ModulesFile:
    """An IndexMem file as result rows name it: its sha256, and that of the file whose indexer it
    carries unchanged (itself, unless the file says it only retrained the memory)."""

    sha256: str
    indexer_sha256: str

    def for_config(self, spec: str) -> str | None:
        """The sha256 a row of configuration ``spec`` records: none without modules, the
        indexer's lineage without the memory, the file itself with it."""
        if not uses_modules(spec):
            return None
        return self.sha256 if engine_options(spec, 1)["memory"] else self.indexer_sha256


def modules_file(path: Path, sha256: str | None = None) -> ModulesFile:
    with open_gguf(path) as g:
        parent = g.get(S.K_INDEXER_FROM)
    sha256 = sha256 or sha256_of(path)
    return ModulesFile(sha256, parent or sha256)


def measured_with_files(row: dict, model_sha256: str, modules: ModulesFile | None) -> bool:
    """Whether a result row was measured with this model file and, if its configuration runs
    IndexMem's modules, with these modules (a configuration without the memory: with their
    indexer). Rows written before results recorded their files count for the configurations
    without modules; for those with modules nothing says which ran, so they do not."""
    if "model_sha256" not in row:
        return not uses_modules(row["config"])
    expected = modules.for_config(row["config"]) if modules else None
    if uses_modules(row["config"]) and expected is None:
        return False
    return (row["model_sha256"], row["indexmem_sha256"]) == (model_sha256, expected)


def modules_sha256(
    model: str, path: Path, model_sha256: str, indexmem: str | None = None
) -> ModulesFile | None:
    """The IndexMem file that configurations using modules load for ``model`` (whose GGUF is
    ``path``; ``indexmem`` a sidecar given by the user), None if there is none. Results record
    its sha256 (``ModulesFile.for_config``), so rows measured with other modules, say before a
    retraining, are neither resumed nor reported."""
    found, _ = find_indexmem(model, path, indexmem)
    if found is None:
        return None
    merged = Path(found).resolve() == Path(path).resolve()
    return modules_file(found, model_sha256 if merged else None)

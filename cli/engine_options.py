"""The engine options that indexmem-chat and indexmem-serve share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..engine.registry import DEFAULT_MODEL, MODELS
from .common import status

Model = Annotated[str, typer.Option(help="registry name or path to a .gguf file")]
NCtx = Annotated[int, typer.Option(help="context length (default: the model's; at most 8192 with full KV)")]
Threads = Annotated[int, typer.Option(help="compute threads")]
Batch = Annotated[int, typer.Option(help="prompt tokens per forward step")]
Policy = Annotated[
    str,
    typer.Option(
        help="KV eviction: indexmem (default when IndexMem modules are available), "
        "full, streaming, h2o, snapkv, tova, keydiff, random"
    ),
]
Budget = Annotated[int, typer.Option(help="KV tokens kept per layer (indexmem: 1024 unless given)")]
Sinks = Annotated[int, typer.Option(help="first tokens always kept")]
Window = Annotated[int, typer.Option(help="most recent tokens always kept (indexmem: 64, others: 0)")]
Tau = Annotated[
    int, typer.Option(help="compress every tau tokens past the budget (default 16; 1: every step)")
]
IndexMemFile = Annotated[
    Path,
    typer.Option(
        "--indexmem",
        help="IndexMem sidecar GGUF (default: merged into the model, or shipped for registry models)",
    ),
]
NoIndexMem = Annotated[bool, typer.Option("--no-indexmem", help="do not load IndexMem modules")]
_CACHE_TYPES_HELP = "f16 (default), bf16, f32, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"
CacheTypeK = Annotated[
    str, typer.Option("--cache-type-k", "-ctk", help=f"K cache element type: {_CACHE_TYPES_HELP}")
]
CacheTypeV = Annotated[
    str, typer.Option("--cache-type-v", "-ctv", help=f"V cache element type: {_CACHE_TYPES_HELP}")
]
_MEMORY_ON = ", ".join(
    m.name for m in MODELS.values() if m.memory
)  # registry models whose memory is on by default
Memory = Annotated[
    bool | None,
    typer.Option(
        "--memory/--no-memory",
        show_default=False,
        help=f"latent memory of evicted tokens (needs IndexMem modules; default: on for {_MEMORY_ON} with its "
        "shipped sidecar and the indexmem policy, else off)",
    ),
]

RecallTier = Annotated[
    str | None,
    typer.Option(
        "--recall",
        help="disk or ram: keep evicted tokens (on disk in a temporary folder, or in RAM) and bring "
        "them back when the indexer's later queries want them (indexmem policy)",
    ),
]


RecallPerStep = Annotated[
    int | None,
    typer.Option(
        "--recall-per-step",
        min=1,
        help="with --recall: at most this many tokens brought back per layer at a compression, or "
        "per step with --recall-at each_step (default: the engine's, engine/recall.py PER_STEP, "
        "engine/recall_step.py STEP_PER_STEP)",
    ),
]


RecallAt = Annotated[
    str,
    typer.Option(
        "--recall-at",
        help="with --recall: every_chunk (every compression), prompt_end (only after a prompt's "
        "last chunk and while generating: the queries of the question, not of the text before it) "
        "or each_step (with --recall-score attention: every step from the prompt's last token on "
        "swaps in the stored tokens its own attention wants, and runs again)",
    ),
]


RecallScore = Annotated[
    str,
    typer.Option(
        "--recall-score",
        help="with --recall-at prompt_end: index (the indexer ranks stored against cached tokens) "
        "or attention (the model's attention from the prompt's last queries ranks them all); "
        "each_step needs attention",
    ),
]


def load_engine(
    model: str = DEFAULT_MODEL,
    n_ctx: int | None = None,
    threads: int = 1,
    batch: int = 512,
    policy: str | None = None,
    budget: int | None = None,
    sinks: int = 4,
    window: int | None = None,
    tau: int | None = None,
    indexmem: Path | None = None,
    no_indexmem: bool = False,
    memory: bool | None = None,
    recall: str | None = None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    recall_per_step: int | None = None,
    recall_at: str = "every_chunk",
    recall_score: str = "index",
):
    from ..engine.api import Engine

    return Engine.load(
        model,
        n_threads=threads,
        n_ctx=n_ctx,
        n_batch=batch,
        progress=status,
        policy=policy,
        budget=budget,
        sinks=sinks,
        window=window,
        tau=tau,
        memory=memory,
        recall=recall,
        recall_per_step=recall_per_step,
        recall_at=recall_at,
        recall_score=recall_score,
        indexmem=False if no_indexmem else (str(indexmem) if indexmem else None),
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
    )


def describe_cache(engine) -> str:
    st = engine.stats()
    types = (
        ""
        if st["cache_type_k"] == st["cache_type_v"] == "f16"
        else f", K {st['cache_type_k']} / V {st['cache_type_v']}"
    )
    if not st["budget"]:
        return "full KV cache" + types
    return (
        f"{st['policy']}, budget {st['budget']} tokens/layer"
        + (", latent memory" if st["memory"] else "")
        + (f", recall from {st['recall']}" if st["recall"] else "")
        + types
    )

"""indexmem-serve: an OpenAI-compatible server (/v1/chat/completions, /v1/completions,
/v1/models, /health) on one local model with a bounded KV cache."""

from __future__ import annotations

from pathlib import Path

import typer

from ..engine.registry import DEFAULT_MODEL
from .common import clean_errors, status
from .engine_options import (
    Batch,
    Budget,
    CacheTypeK,
    CacheTypeV,
    IndexMemFile,
    Memory,
    Model,
    NCtx,
    NoIndexMem,
    Policy,
    RecallAt,
    RecallPerStep,
    RecallScore,
    RecallTier,
    Sinks,
    Tau,
    Threads,
    Window,
    describe_cache,
    load_engine,
)

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@clean_errors
def main(
    model: Model = DEFAULT_MODEL,
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 exposes the model to the network)"),
    port: int = typer.Option(8080, help="TCP port"),
    max_request_bytes: int = typer.Option(1 << 20, help="larger request bodies get 413"),
    max_tokens: int = typer.Option(4096, help="the most tokens one request may ask for (more gets 400)"),
    queue: int = typer.Option(16, help="requests waiting at most (more get 503)"),
    n_ctx: NCtx = None,
    threads: Threads = 1,
    batch: Batch = 512,
    policy: Policy = None,
    budget: Budget = None,
    sinks: Sinks = 4,
    window: Window = None,
    tau: Tau = None,
    indexmem: IndexMemFile = None,
    no_indexmem: NoIndexMem = False,
    memory: Memory = None,
    recall: RecallTier = None,
    recall_per_step: RecallPerStep = None,
    recall_at: RecallAt = "every_chunk",
    recall_score: RecallScore = "index",
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
):
    try:
        import uvicorn

        from ..server.app import create_app
    except ImportError as exc:
        raise typer.BadParameter(
            f"the server needs its extra: pip install 'indexmem[serve]' ({exc})"
        ) from exc
    engine = load_engine(
        model,
        n_ctx,
        threads,
        batch,
        policy,
        budget,
        sinks,
        window,
        tau,
        indexmem,
        no_indexmem,
        memory,
        recall,
        cache_type_k,
        cache_type_v,
        recall_per_step=recall_per_step,
        recall_at=recall_at,
        recall_score=recall_score,
    )
    model_id = Path(model).stem if model.endswith(".gguf") else model
    app_ = create_app(
        engine, model_id, max_request_bytes=max_request_bytes, max_tokens_limit=max_tokens, max_queue=queue
    )
    status(f"{engine.model_path.name} ({describe_cache(engine)}) on http://{host}:{port}/v1")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    app()

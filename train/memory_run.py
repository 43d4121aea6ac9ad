"""One resumable end-to-end memory fit, from an IndexMem file to a checkpoint folder:
training windows from the corpus, the held-out measure before and after, the layers whose
memory stays open, and a ``config.json`` that records everything (``indexmem-convert`` reads
the folder)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..engine.registry import sha256_of
from ..engine.tokenizer import Tokenizer
from .memory_eval import HeldOut, ratio_keys
from .memory_fit import MemoryFitConfig, MemoryTrainer, write_checkpoint
from .retrieval import LOOKALIKE_SHAPES
from .student.model import load_backbone
from .student.sidecar import modules_from_file
from .targets import plain_targets, retrieval_targets

MEASURED_STEPS = 3  # with a time budget, the steps that set the step count
GATE_FLOOR = 0.05  # a memory layer whose mean held-out gate ends below this is shut


def training_windows(
    tokenizer, text: str, seq_len: int, count: int, seed: int, tail: int = 128, lookalike: float = 0.0
):
    """``count`` windows: three in five retrieval-shaped (1 to 4 facts), the rest plain; the share
    ``lookalike`` of the retrieval windows hides the asked facts among facts in the same wording."""
    if not 0 <= lookalike <= 1:
        raise ValueError(f"lookalike must be a share between 0 and 1, not {lookalike}")
    rng = random.Random(seed)
    n_retrieval = count * 3 // 5
    n_lookalike = round(n_retrieval * lookalike)
    windows = []
    for facts, n in zip(range(1, 5), _even_split(n_retrieval - n_lookalike, 4)):
        if n:
            windows += retrieval_targets(tokenizer, text, seq_len, n, facts, seed + facts)
    for (facts, distractors), n in zip(LOOKALIKE_SHAPES, _even_split(n_lookalike, len(LOOKALIKE_SHAPES))):
        if n:
            windows += retrieval_targets(tokenizer, text, seq_len, n, facts, seed + 10 + facts, distractors)
    windows += plain_targets(tokenizer, text[len(text) // 7 :], seq_len, count - n_retrieval, tail)
    rng.shuffle(windows)
    return windows


def _even_split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def heldout_windows(tokenizer, text: str, seq_len: int, count: int, seed: int):
    n = max(1, count * 2 // 3)
    return retrieval_targets(tokenizer, text, seq_len, n, 3, seed) + plain_targets(
        tokenizer, text[len(text) // 2 :], seq_len, count - n, 128
    )


def fit_memory(
    model_path: Path,
    indexmem_path: Path,
    corpus: Path,
    out_dir: Path,
    cfg: MemoryFitConfig,
    seq_len: int = 2048,
    n_windows: int = 400,
    n_heldout: int = 6,
    on_step=None,
    on_phase=None,
    seconds: float | None = None,
) -> dict:
    """``seconds``: a time budget for the training steps; the step count then follows from the
    first steps' mean time (and is kept when the run resumes)."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    phase = on_phase or (lambda msg: None)
    out_dir = Path(out_dir)
    modules, settings = modules_from_file(indexmem_path, model_path)
    if cfg.combine is not None:
        use_combine(modules, cfg.combine)
    share = modules.sizes.mem_combine == "share"
    if cfg.start_gate_bias is not None and not share:  # a resumed run loads its own gates over these
        with torch.no_grad():
            for memory in modules.memories:
                memory.gate.bias.fill_(cfg.start_gate_bias)
    tokenizer = Tokenizer(model_path)
    windows = training_windows(
        tokenizer, (corpus / "train.txt").read_text(), seq_len, n_windows, cfg.seed, lookalike=cfg.lookalike
    )
    held = heldout_windows(tokenizer, (corpus / "heldout.txt").read_text(), seq_len, n_heldout, cfg.seed + 1)
    backbone = load_backbone(model_path, cfg.student_weights)
    trainer = MemoryTrainer(
        backbone, modules, settings["memory_layers"], settings["pool_kernel"], windows, out_dir, cfg
    )
    if cfg.start_gate_bias is not None and share and not (out_dir / "memory_fit_state.pt").exists():
        phase("gate biases calibrated on a training window")
        trainer.calibrate_gates(cfg.start_gate_bias)
    phase("held-out teacher")
    heldout = HeldOut(trainer, held)
    report_path = out_dir / "memory_fit_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if "before" not in report:
        phase("held-out before: without memory")
        report["without_memory"] = heldout.kl(memory=False)
        phase("held-out before: with the starting memory")
        report["before"] = heldout.kl(memory=True)
        _write_json(report_path, report)
    resumed = trainer.resume()
    t0 = time.time()
    while trainer.step < cfg.steps:
        record = trainer.train_step()
        if seconds is not None and not resumed and trainer.step == MEASURED_STEPS:
            cfg.steps = max(MEASURED_STEPS, int(seconds / ((time.time() - t0) / MEASURED_STEPS)))
        if on_step:
            on_step(record)
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
            trainer.save()
    report["train_seconds_this_run"] = round(time.time() - t0, 1)
    phase("held-out after")
    report["after"] = heldout.kl(memory=True)
    open_layers = [il for il, g in report["after"]["gates"].items() if g >= GATE_FLOOR]
    chosen = sorted(int(il) for il in open_layers)
    if len(chosen) < len(trainer.memory_layers):
        phase(f"held-out with the {len(chosen)} open memory layers")
        report["open_only"] = heldout.kl(memory=True, layers=chosen)
        if _mean_kl(report["open_only"]) > _mean_kl(report["after"]):
            chosen = list(trainer.memory_layers)
    report["memory_layers"] = chosen
    _write_json(report_path, report)
    config = {
        "model": str(model_path),
        "base_sha256": sha256_of(model_path),
        "arch": backbone.hp.arch,
        "n_layer": backbone.hp.n_layer,
        "sizes": modules.sizes.to_dict(),
        "memory_layers": chosen,
        "pool_kernel": settings["pool_kernel"],
        "fit": {"sinks": cfg.sinks},
        "memory_fit": asdict(cfg),
        "started_from": {"indexmem": str(indexmem_path), "sha256": sha256_of(indexmem_path)},
        # the indexer is frozen: results measured without the memory carry over
        "indexer_from": settings["indexer_from"] or sha256_of(indexmem_path),
        "data": {"corpus": str(corpus), "seq_len": seq_len, "windows": len(windows), "heldout": len(held)},
        "steps": trainer.step,
        "final_kl": sum(r["kl"] for r in trainer.history[-20:]) / max(1, len(trainer.history[-20:])),
        "heldout": {k: report[k] for k in ("without_memory", "before", "after") if k in report},
    }
    write_checkpoint(out_dir, modules, config)
    return report


def use_combine(modules, combine: str) -> None:
    """Every memory joins attention by ``combine`` (recorded in the checkpoint's sizes)."""
    from dataclasses import replace

    from ..convert.schema import MEM_COMBINES

    if combine not in MEM_COMBINES:
        raise ValueError(f"combine must be one of {MEM_COMBINES}, not {combine!r}")
    modules.sizes = replace(modules.sizes, mem_combine=combine)
    for memory in modules.memories:
        memory.s = modules.sizes


def _mean_kl(result: dict) -> float:
    values = [result[k] for k in ratio_keys(result)]
    return sum(values) / len(values)


def _write_json(path: Path, data: dict) -> None:
    from ..atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=str).encode())

"""Fitting IndexMem on cached teacher features: stage 1 (indexer), stage 2 (indexer + memory).

AdamW with a warmup-stable-decay schedule, seeded, resumable: a checkpoint (weights, optimizer,
step, random state) is written atomically every ``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_file, write_atomic
from .features import FeatureSet
from .losses import attention, indexer_importance, kl_loss, memory_loss, teacher_logits, window_importance
from .modules import Indexer, IndexMemSizes, LatentMemory


@dataclass
class FitConfig:
    stage1_steps: int = 300
    stage2_steps: int = 200
    lr: float = 1e-3
    final_lr: float = 7.5e-6
    warmup: int = 30
    decay_steps: int = 150  # the last steps decay linearly from lr to final_lr
    weight_decay: float = 0.01
    layers_per_step: int = 8  # random layers per step (0: all)
    always_layers: tuple[int, ...] = ()  # layers in every step besides the random ones
    evict_ratio: float = 0.9  # stage 2: share of the prefix evicted into the memory
    n_trail: int = 64  # stage 2: trailing queries the memory loss is measured on
    beta: float = 1.0
    sinks: int = 4
    # > 0: the indexer's importance comes from one random window of this many queries, as in a
    # chunked-prefill compression round, and is fitted to the teacher's importance over every
    # query, later ones included (0: METHOD.md's rule, both over every query)
    student_window: int = 0
    # > 0: the teacher counts only queries at least this far after a key (see teacher_logits)
    teacher_min_distance: int = 0
    block: int = 256
    seed: int = 0
    checkpoint_every: int = 50

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps


class IndexMemModel(nn.Module):
    """One indexer and one latent memory per layer."""

    def __init__(self, n_layer: int, sizes: IndexMemSizes):
        super().__init__()
        self.sizes = sizes
        self.indexers = nn.ModuleList(Indexer(sizes) for _ in range(n_layer))
        self.memories = nn.ModuleList(LatentMemory(sizes) for _ in range(n_layer))


def lr_at(step: int, cfg: FitConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_start = cfg.total_steps - cfg.decay_steps
    if step < decay_start:
        return cfg.lr
    frac = (step - decay_start) / max(1, cfg.decay_steps)
    return cfg.lr + (cfg.final_lr - cfg.lr) * frac


def keep_top(importance: torch.Tensor, budget: int, sinks: int) -> torch.Tensor:
    """Indices kept when ``budget`` of ``len(importance)`` tokens stay: sinks, then the top."""
    scores = importance.detach().clone()
    scores[:sinks] = float("inf")
    return torch.topk(scores, min(budget, len(scores))).indices.sort().values


def kept_attention_residual(f: dict, keep: torch.Tensor, prefix: int, scale: float, window: int = 0):
    """o_full − o_attn(kept) for the trailing queries, where the prefix holds only ``keep``."""
    n = f["x"].shape[0]
    keys = torch.cat([keep, torch.arange(prefix, n)])
    q_pos = torch.arange(prefix, n).unsqueeze(1)
    visible = keys.unsqueeze(0) <= q_pos
    if window:
        visible &= (q_pos - keys.unsqueeze(0)) < window
    o_kept, lse = attention(
        f["q_cur"][prefix:], f["k_cur"][keys], f["v"][keys], visible, scale, with_lse=True
    )
    return f["o"][prefix:], o_kept, lse


def memory_case(
    indexer, f: dict, n_trail: int, evict_ratio: float, sinks: int, scale: float, block: int = 256
):
    """The stage-2 setting: the indexer evicts ``evict_ratio`` of the prefix, the trailing
    ``n_trail`` queries attend to what is kept. Returns the arguments of :func:`memory_loss`
    after the memory: (o_full, o_kept, trailing pre-RoPE queries, evicted keys, evicted values,
    the log-sum-exp of the trailing queries' scores over the kept keys)."""
    prefix = f["x"].shape[0] - n_trail
    with torch.no_grad():
        imp = indexer_importance(indexer, f["x"][:prefix], f["q_pre"][:prefix], block, grad=False)
    keep = keep_top(imp, max(sinks + 1, round(prefix * (1 - evict_ratio))), sinks)
    evicted = torch.ones(prefix, dtype=torch.bool)
    evicted[keep] = False
    o_full, o_kept, lse = kept_attention_residual(f, keep, prefix, scale)
    return o_full, o_kept, f["q_pre"][prefix:], f["k_pre"][:prefix][evicted], f["v"][:prefix][evicted], lse


class Trainer:
    def __init__(
        self, features: FeatureSet, out_dir: Path, cfg: FitConfig, sizes: IndexMemSizes | None = None
    ):
        self.fs, self.out_dir, self.cfg = features, Path(out_dir), cfg
        m = features.manifest
        self.sizes = sizes or IndexMemSizes.paper(m["d_model"], m["n_head"], m["d_head"])
        torch.manual_seed(cfg.seed)
        self.model = IndexMemModel(m["n_layer"], self.sizes)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = random.Random(cfg.seed)
        self.step = 0
        self.history: list[dict] = []
        self._teacher: dict[tuple[int, int], torch.Tensor] = {}
        self.global_layers = [il for il, swa in enumerate(m["swa_layers"]) if not swa]

    def use_features(self, features: FeatureSet) -> None:
        """Train on another feature set of the same model from the next step on (features are
        streamed in shards by ``indexmem-train auto``)."""
        if features.manifest["n_layer"] != self.fs.n_layer:
            raise ValueError("a feature shard of another model")
        self.fs, self._teacher = features, {}

    def teacher(self, seq: int, il: int, f: dict) -> torch.Tensor:
        key = (seq, il)
        if key not in self._teacher:
            self._teacher[key] = teacher_logits(
                f["q_cur"],
                f["k_cur"],
                self.cfg.block,
                scale=self.fs.manifest["kq_scale"],
                min_distance=self.cfg.teacher_min_distance,
            )
        return self._teacher[key]

    def layer_loss(self, seq: int, il: int, stage: int) -> tuple[torch.Tensor, dict]:
        cfg, f = self.cfg, self.fs.layer(seq, il)
        n = f["x"].shape[0]
        start, end = 0, n  # the queries whose importance the indexer is fitted on (all: METHOD.md's rule)
        if 0 < cfg.student_window < n:
            end = self.rng.randrange(cfg.student_window, n + 1)
            start = end - cfg.student_window
        imp = window_importance(self.model.indexers[il], f["x"], f["q_pre"], start, end, cfg.block)
        l_index = kl_loss(self.teacher(seq, il, f)[:end], imp, cfg.sinks)
        parts = {"index": l_index.item()}
        loss = l_index
        if stage == 2 and il in self.global_layers:
            l_mem = self.memory_loss(f, il)
            parts["mem"] = l_mem.item()
            loss = loss + cfg.beta * l_mem
        return loss, parts

    def memory_loss(self, f: dict, il: int) -> torch.Tensor:
        cfg = self.cfg
        case = memory_case(
            self.model.indexers[il],
            f,
            cfg.n_trail,
            cfg.evict_ratio,
            cfg.sinks,
            self.fs.manifest["kq_scale"],
            cfg.block,
        )
        return memory_loss(self.model.memories[il], *case)

    def train_step(self) -> dict:
        cfg = self.cfg
        stage = 1 if self.step < cfg.stage1_steps else 2
        seq = self.rng.randrange(self.fs.n_sequences)
        layers = list(range(self.fs.n_layer))
        if cfg.layers_per_step:
            layers = self.rng.sample(layers, min(cfg.layers_per_step, len(layers)))
            layers += [il for il in cfg.always_layers if il not in layers]
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        self.opt.zero_grad()
        totals: dict[str, list[float]] = {}
        for il in layers:
            loss, parts = self.layer_loss(seq, il, stage)
            (loss / len(layers)).backward()
            for k, v in parts.items():
                totals.setdefault(k, []).append(v)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        record = {
            "step": self.step,
            "stage": stage,
            "lr": lr_at(self.step - 1, cfg),
            **{k: sum(v) / len(v) for k, v in totals.items()},
        }
        self.history.append(record)
        return record

    # --- checkpoints -------------------------------------------------------------------
    def save(self, final: bool = False) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        with atomic_file(self.out_dir / "trainer_state.pt") as f:
            torch.save(state, f)
        if final:
            from safetensors.torch import save as to_safetensors

            tensors = {k: v.contiguous() for k, v in self.model.state_dict().items()}
            write_atomic(self.out_dir / "weights.safetensors", to_safetensors(tensors))

    def resume(self) -> bool:
        path = self.out_dir / "trainer_state.pt"
        if not path.exists():
            return False
        state = torch.load(path, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.history = state["step"], state["history"]
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        return True


def checkpoint_config(trainer: Trainer, data: dict, extra: dict | None = None) -> dict:
    """The ``config.json`` of a fitted checkpoint: what it was trained for, on what, and how."""
    m, last = trainer.fs.manifest, trainer.history[-20:]
    with_mem = [r["mem"] for r in last if "mem" in r]
    return {
        "model": m["model_path"],
        "base_sha256": m["model_sha256"],
        "arch": m["arch"],
        "n_layer": trainer.fs.n_layer,
        "sizes": trainer.sizes.to_dict(),
        "global_layers": trainer.global_layers,
        "fit": asdict(trainer.cfg),
        "steps": trainer.step,
        "data": data,
        "final_index_loss": sum(r["index"] for r in last) / max(1, len(last)),
        "final_mem_loss": sum(with_mem) / max(1, len(with_mem)),
        **(extra or {}),
    }


def fit(
    features_dir: Path,
    out_dir: Path,
    cfg: FitConfig,
    on_step=None,
    extra_config: dict | None = None,
    size_overrides: dict | None = None,
) -> dict:
    """Train (or resume) and write the checkpoint. ``size_overrides`` replaces the paper's module
    sizes (e.g. ``n_idx_heads``, ``d_idx``, ``d_mem``)."""
    fs = FeatureSet(features_dir)
    m = fs.manifest
    sizes = IndexMemSizes.paper(m["d_model"], m["n_head"], m["d_head"], **(size_overrides or {}))
    trainer = Trainer(fs, out_dir, cfg, sizes)
    trainer.resume()
    t0 = time.time()
    while trainer.step < cfg.total_steps:
        record = trainer.train_step()
        if on_step:
            on_step(record)
        if trainer.step % cfg.checkpoint_every == 0:
            trainer.save()
    trainer.save(final=True)
    data = {
        "features": str(features_dir),
        "source": fs.manifest.get("source", ""),
        "seq_len": fs.manifest["seq_len"],
        "n_sequences": fs.n_sequences,
    }
    extra = {"train_seconds_this_run": round(time.time() - t0, 1), **(extra_config or {})}
    summary = checkpoint_config(trainer, data, extra)
    write_atomic(Path(out_dir) / "config.json", json.dumps(summary, indent=2).encode())
    return summary

"""End-to-end fitting of the latent memory (issue 43): every layer evicting and reading at once.

The differentiable student (``train/student``) runs the engine's bounded procedure on a
training window (chunked prefill, the frozen indexer evicting after every chunk, the evicted
tokens written into each memory layer, the gated readouts added to attention); its next-token
distributions on the window's targets, which come after the evicted text, are fitted to the
full-KV model's (KL). Only the memories learn (φ and the gate); the backbone and the indexer
stay frozen. The chunks before the first target run without gradients; the chunks holding
targets run with them, the memory states rebuilt from the recorded evictions so the loss
reaches φ on the write side too (what earlier chunks' readouts did to the cached keys and values
is held fixed). A small penalty on the mean gate closes the memories that do not earn their
keep; layers whose gate stays near zero are then dropped (no write, no readout). With
``harm_weight`` the loss also charges every target the memory makes worse than the bounded
model without it (``harm``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_file, write_atomic
from .student.cache import BoundedSettings
from .student.model import Student
from .targets import TargetWindow


@dataclass
class MemoryFitConfig:
    steps: int = 400
    lr: float = 1e-3
    final_lr: float = 1e-5
    warmup: int = 20
    weight_decay: float = 0.0
    chunk: int = 512  # prefill chunk, the engine's n_batch
    ratios: tuple[float, ...] = (0.5, 0.75, 0.9)  # eviction ratio drawn per step
    sinks: int = 4
    window: int = 64  # recent tokens kept (the engine's and RULER's default)
    tau: int = 16
    gate_penalty: float = 1e-3  # times the mean gate over memory layers
    # times the mean over targets of how much the memory raised that target's KL above the
    # bounded model's without memory (0: not computed)
    harm_weight: float = 0.0
    # reset every gate's bias before the fit (None: keep the file's); with the "share" rule the
    # biases are set so that each layer's mean gate logit on a calibration window is this
    start_gate_bias: float | None = None
    combine: str | None = None  # the readout's combine rule, "add", "mix" or "share" (None: the file's)
    # share of the retrieval windows whose asked facts hide among same-worded ones (memory_run)
    lookalike: float = 0.0
    student_weights: str = "f32"  # how the frozen backbone's matrices are held: "f32" or "f16" (half the RAM)
    seed: int = 0
    checkpoint_every: int = 10


def lr_at(step: int, cfg: MemoryFitConfig) -> float:
    """Linear warmup, then cosine decay to ``final_lr``."""
    import math

    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def budget_for(n_tokens: int, ratio: float, cfg: MemoryFitConfig) -> int:
    return max(cfg.sinks + cfg.window + 1, round(n_tokens * (1 - ratio)))


def kl_at_targets(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student) of the next-token distributions."""
    return kl_per_target(teacher_logits, student_logits).mean()


def kl_per_target(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    log_t = F.log_softmax(teacher_logits, -1)
    return (log_t.exp() * (log_t - F.log_softmax(student_logits, -1))).sum(-1)


def harm(kl_with: torch.Tensor, kl_without: torch.Tensor) -> torch.Tensor:
    """Mean over targets of the KL the memory added (targets it improved count zero).

    KL alone lets the memory trade: it lowers KL most where the bounded model lost the answer,
    largely by making the prediction less sure, and pays for that with small losses where the
    kept tokens held the answer, which are the ones an exact-match score sees."""
    return torch.relu(kl_with - kl_without).mean()


def run_window(student: Student, window: TargetWindow, chunk: int, grad: bool = False) -> torch.Tensor:
    """Logits at the window's targets, fed chunk by chunk from an empty cache; with ``grad``
    the chunks holding targets build a graph for the backward pass."""
    student.reset()
    tokens, targets = window.tokens, torch.as_tensor(window.targets)
    first = int(targets.min())
    out = []
    for c0 in range(0, int(targets.max()) + 1, chunk):
        c1 = min(c0 + chunk, len(tokens))
        here = targets[(targets >= c0) & (targets < c1)] - c0
        logits = student.step(
            tokens[c0:c1], logits_at=here.tolist() if len(here) else None, grad=grad and c1 > first
        )
        if logits is not None:
            out.append(logits)
    return torch.cat(out)


class MemoryTrainer:
    def __init__(
        self,
        backbone,
        modules,
        memory_layers,
        pool_kernel: int,
        windows: list[TargetWindow],
        out_dir: Path,
        cfg: MemoryFitConfig,
    ):
        self.backbone, self.modules, self.cfg = backbone, modules, cfg
        self.memory_layers, self.pool_kernel = list(memory_layers), pool_kernel
        self.windows, self.out_dir = windows, Path(out_dir)
        for p in modules.indexers.parameters():
            p.requires_grad_(False)
        self.params = [p for il in self.memory_layers for p in modules.memories[il].parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = random.Random(cfg.seed)
        self.order = list(range(len(windows)))
        self.rng.shuffle(self.order)
        self.step = 0
        self.history: list[dict] = []
        self.teacher = Student(backbone)

    def student(self, budget: int, memory: bool = True) -> Student:
        cfg = self.cfg
        settings = BoundedSettings(budget, cfg.sinks, cfg.window, cfg.tau, self.pool_kernel)
        memories = {il: self.modules.memories[il] for il in self.memory_layers} if memory else None
        return Student(self.backbone, settings, list(self.modules.indexers), memories)

    def calibrate_gates(self, start_logit: float, ratio: float = 0.9, rounds: int = 3) -> dict[int, float]:
        """Start every memory layer's gate at w = 0 and the bias c that makes its mean gate over
        the last chunk of the first training window (where the targets are, and the memory
        holds the most), at ``ratio``, sigmoid(``start_logit``). The "share" gate's logit adds
        log den(q) − lse, whose level and spread depend on φ, the layer and the query, so no
        single bias says "nearly shut" for all layers. Every layer's readout changes what the
        layers above it see, so the biases start shut and are corrected over a few rounds.
        Returns the biases."""
        window = self.windows[self.order[0]]
        target = torch.sigmoid(torch.tensor(start_logit)).item()
        memories = {il: self.modules.memories[il] for il in self.memory_layers}
        with torch.no_grad():
            for memory in memories.values():
                memory.gate.weight.zero_()
                memory.gate.bias.fill_(-50.0)
            for _ in range(rounds):
                student = self.student(budget_for(len(window.tokens), ratio, self.cfg))
                run_window(student, window, self.cfg.chunk)
                for il, memory in memories.items():
                    logits = student.gate_logits.get(il, [torch.zeros(1)])[-1].double()
                    memory.gate.bias.add_(_shift_for_mean_gate(logits, target))
        return {il: memory.gate.bias.item() for il, memory in memories.items()}

    def train_step(self) -> dict:
        cfg, t0 = self.cfg, time.time()
        window = self.windows[self.order[self.step % len(self.order)]]
        ratio = self.rng.choice(cfg.ratios)
        with torch.no_grad():
            target = run_window(self.teacher, window, cfg.chunk)
        budget = budget_for(len(window.tokens), ratio, cfg)
        student = self.student(budget)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        self.opt.zero_grad()
        kl_each = kl_per_target(target, run_window(student, window, cfg.chunk, grad=True))
        kl = kl_each.mean()
        gates = [g for values in student.gates.values() for g in values if g.requires_grad]
        gate = torch.stack(gates).mean() if gates else torch.zeros(())
        loss = kl + cfg.gate_penalty * gate
        harmed = torch.zeros(())
        if cfg.harm_weight:
            with torch.no_grad():
                without = run_window(self.student(budget, memory=False), window, cfg.chunk)
            harmed = harm(kl_each, kl_per_target(target, without))
            loss = loss + cfg.harm_weight * harmed
        if loss.requires_grad:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        self.step += 1
        record = {
            "step": self.step,
            "kl": kl.item(),
            "gate": gate.item(),
            "harm": harmed.item(),
            "ratio": ratio,
            "kind": window.kind,
            "tokens": len(window.tokens),
            "seconds": round(time.time() - t0, 2),
        }
        self.history.append(record)
        return record

    # --- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "memories": {il: self.modules.memories[il].state_dict() for il in self.memory_layers},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "steps": self.cfg.steps,
            "rng": self.rng.getstate(),
            "order": self.order,
            "history": self.history,
        }
        with atomic_file(self.out_dir / "memory_fit_state.pt") as f:
            torch.save(state, f)

    def resume(self) -> bool:
        path = self.out_dir / "memory_fit_state.pt"
        if not path.exists():
            return False
        state = torch.load(path, weights_only=False)
        for il, sd in state["memories"].items():
            self.modules.memories[il].load_state_dict(sd)
        self.opt.load_state_dict(state["opt"])
        self.step, self.order, self.history = state["step"], state["order"], state["history"]
        self.cfg.steps = state.get("steps", self.cfg.steps)
        self.rng.setstate(state["rng"])
        return True


def write_checkpoint(out_dir: Path, modules, config: dict) -> None:
    """``weights.safetensors`` (every layer's indexer and memory) and ``config.json``, the
    folder ``indexmem-convert`` reads."""
    from safetensors.torch import save as to_safetensors

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in modules.state_dict().items()}
    write_atomic(out_dir / "weights.safetensors", to_safetensors(tensors))
    write_atomic(out_dir / "config.json", json.dumps(config, indent=2).encode())


def fit_config_dict(cfg: MemoryFitConfig) -> dict:
    return asdict(cfg)


def _shift_for_mean_gate(logits: torch.Tensor, target: float) -> float:
    """The c with mean(sigmoid(logits + c)) = target (bisection: the mean rises with c)."""
    lo, hi = -1e4, 1e4
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.sigmoid(logits + mid).mean().item() < target else (lo, mid)
    return (lo + hi) / 2

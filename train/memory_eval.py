"""Held-out measures of the latent memory in the student: KL of the bounded model's next-token
distributions to the full-KV model's on the targets, with the memory and without it, at
each eviction ratio (the same windows for both), and each memory layer's mean gate."""

from __future__ import annotations

import torch

from .memory_fit import MemoryTrainer, budget_for, kl_at_targets, run_window
from .targets import TargetWindow


class HeldOut:
    def __init__(self, trainer: MemoryTrainer, windows: list[TargetWindow], ratios=(0.75, 0.9)):
        self.trainer, self.windows, self.ratios = trainer, windows, tuple(ratios)
        chunk = trainer.cfg.chunk
        with torch.no_grad():
            self.targets = [run_window(trainer.teacher, w, chunk) for w in windows]

    @torch.no_grad()
    def kl(self, memory: bool, layers=None) -> dict:
        """{ratio: mean KL over the windows}, plus {"gates": {layer: mean gate}} with memory.
        ``layers``: the memory layers to use (default: the trainer's)."""
        tr, out, gates = self.trainer, {}, {}
        saved = tr.memory_layers
        if layers is not None:
            tr.memory_layers = list(layers)
        try:
            for ratio in self.ratios:
                values = []
                for w, target in zip(self.windows, self.targets):
                    student = tr.student(budget_for(len(w.tokens), ratio, tr.cfg), memory=memory)
                    values.append(kl_at_targets(target, run_window(student, w, tr.cfg.chunk)).item())
                    for il, g in student.gates.items():
                        gates.setdefault(il, []).extend(float(x) for x in g)
                out[str(ratio)] = sum(values) / len(values)
        finally:
            tr.memory_layers = saved
        if memory:
            out["gates"] = {il: sum(v) / len(v) for il, v in sorted(gates.items())}
        return out

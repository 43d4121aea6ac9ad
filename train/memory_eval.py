"""Held-out measures of the latent memory in the student: KL of the bounded model's next-token
distributions to the full-KV model's on the targets, with the memory and without it, at
each eviction ratio (the same windows for both), how often the bounded model's most likely next
token is the full model's, and each memory layer's mean gate."""

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
        """{ratio: mean KL over the windows}, {"top1": {ratio: share of the targets whose most
        likely next token is the full-KV model's}} and, with memory, {"gates": {layer: mean gate}}.
        ``layers``: the memory layers to use (default: the trainer's)."""
        tr, out, gates, top1 = self.trainer, {}, {}, {}
        saved = tr.memory_layers
        if layers is not None:
            tr.memory_layers = list(layers)
        try:
            for ratio in self.ratios:
                values, agree = [], []
                for w, target in zip(self.windows, self.targets):
                    student = tr.student(budget_for(len(w.tokens), ratio, tr.cfg), memory=memory)
                    logits = run_window(student, w, tr.cfg.chunk)
                    values.append(kl_at_targets(target, logits).item())
                    agree.append(logits.argmax(-1) == target.argmax(-1))
                    for il, g in student.gates.items():
                        gates.setdefault(il, []).extend(float(x) for x in g)
                out[str(ratio)] = sum(values) / len(values)
                top1[str(ratio)] = torch.cat(agree).double().mean().item()
        finally:
            tr.memory_layers = saved
        out["top1"] = top1
        if memory:
            out["gates"] = {il: sum(v) / len(v) for il, v in sorted(gates.items())}
        return out


def ratio_keys(result: dict) -> list[str]:
    """The eviction ratios of a ``HeldOut.kl`` result (its other keys hold per-layer or per-ratio
    dicts)."""
    return [k for k, v in result.items() if not isinstance(v, dict)]

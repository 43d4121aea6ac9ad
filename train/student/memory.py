"""The latent memory's fast state in the student, kept differentiable in the trained weights.

Every round of evicted rows is recorded (detached from the backbone); the state the prefix
built is updated in place without gradients, and :meth:`MemoryTrace.replay` rebuilds it from the
recorded rounds with gradients to φ, so a loss on later tokens reaches the write side of the
memory as well as its readout."""

from __future__ import annotations

import torch

from ..modules import LatentMemory


class MemoryTrace:
    def __init__(self, memory: LatentMemory, group: int):
        self.memory, self.group = memory, group
        self.rounds: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.state = None

    @property
    def written(self) -> bool:
        return bool(self.rounds)

    def _rows(self, k: torch.Tensor, v: torch.Tensor):
        """[N, H_kv, d] per KV head → [N * H, d]: every KV head stands for the query heads of its
        group (METHOD.md section 3), as the engine weights its rows."""
        d = k.shape[-1]
        return (
            k.repeat_interleave(self.group, 1).reshape(-1, d),
            v.repeat_interleave(self.group, 1).reshape(-1, d),
        )

    def write(self, k_pre: torch.Tensor, v: torch.Tensor) -> None:
        """Fold one round of evicted tokens (pre-RoPE keys and values [N, H_kv, d])."""
        k_pre, v = k_pre.detach(), v.detach()
        self.rounds.append((k_pre, v))
        with torch.no_grad():
            state = self.state if self.state is not None else self.memory.empty_state()
            self.state = self.memory.write(state, *self._rows(k_pre, v))

    def replay(self):
        """The same state, recomputed from the recorded rounds with gradients."""
        state = self.memory.empty_state()
        for k_pre, v in self.rounds:
            state = self.memory.write(state, *self._rows(k_pre, v))
        return state

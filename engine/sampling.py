"""Token samplers: greedy, temperature, top-k, top-p, min-p, repetition penalty, seed.

The order follows llama.cpp's default chain: penalties → top-k → top-p → min-p → temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.0  # <= 0: greedy
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> SamplingParams:
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0 or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(
                f"invalid sampling parameters: top_k={self.top_k} top_p={self.top_p} min_p={self.min_p}"
            )
        if self.repeat_penalty <= 0 or self.repeat_last_n < 0:
            raise ValueError("repeat_penalty must be > 0 and repeat_last_n >= 0")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def penalize(self, logits: np.ndarray, history) -> np.ndarray:
        p = self.params
        if p.repeat_penalty == 1.0 or p.repeat_last_n == 0 or not len(history):
            return logits
        recent = np.unique(np.asarray(history[-p.repeat_last_n :], dtype=np.int64))
        out = logits.copy()
        vals = out[recent]
        out[recent] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        return out

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and probabilities left after top-k, top-p and min-p, at temperature."""
        p = self.params
        if 0 < p.top_k < len(logits):
            ids = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
            ids = ids[np.argsort(-logits[ids], kind="stable")]
        else:
            ids = np.argsort(-logits, kind="stable")
        z = logits[ids].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            ids, z, probs = ids[:keep], z[:keep], probs[:keep]
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs[0]
            ids, z = ids[keep], z[keep]
        z = z / p.temperature
        probs = np.exp(z - z.max())
        return ids, probs / probs.sum()

    def sample(self, logits: np.ndarray, history=()) -> int:
        logits = self.penalize(np.asarray(logits, dtype=np.float32), history)
        if self.params.temperature <= 0.0:
            return int(np.argmax(logits))
        ids, probs = self.candidates(logits)
        return int(ids[self.rng.choice(len(ids), p=probs)])

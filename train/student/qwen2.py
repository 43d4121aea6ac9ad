"""Qwen2 / Qwen2.5 in the student: the llama layer with Q/K/V biases and NEOX RoPE
(engine/models/qwen2.py). The biases and the output bias are picked up where the file has them."""

from __future__ import annotations

from .llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    neox = True

    def rope_args(self, il):
        return self.hp.rope_base, self.hp.rope_scale, None

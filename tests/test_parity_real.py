"""The real default model (SmolLM2-135M-Instruct, Q4_1) against llama.cpp on the same file, in
both of llama.cpp's attention settings (the engine's ``flash`` and ``matmul`` paths).

Tolerance: bit-identical kernels and buffer layouts, so we require max |diff| <= 1e-3 over all
512 positions (logit std ~3), top-1 agreement >= 99% (observed: 100%, max |diff| 0), and 32
greedy tokens of a fixed prompt identical. The engine's default path, its own attention kernel,
is compared in ``test_attention_paths.py``.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import LLAMA_CPP_PATH, match_llama_cpp
from indexmem import Engine
from parity import reference_greedy, reference_logits, report


def real_text() -> str:
    """Real English prose that is not evaluation data: the GPL text Debian ships, else
    CPython's own documentation strings."""
    gpl = Path("/usr/share/common-licenses/GPL-3")
    if gpl.exists():
        return gpl.read_text()
    import argparse  # noqa: E401
    import logging
    import textwrap

    return "\n\n".join(m.__doc__ or "" for m in (argparse, logging, textwrap)) * 4


@pytest.fixture(scope="module", params=[True, False], ids=["fa-on", "fa-off"])
def engine(request, default_model_path):
    """(flash_attn, the engine on the path that computes what llama.cpp computes with it)"""
    eng = Engine.load(
        str(default_model_path), n_ctx=1024, attention=LLAMA_CPP_PATH[request.param], **match_llama_cpp()
    )
    yield request.param, eng
    eng.close()


def test_top1_agreement_over_512_positions_of_real_text(engine, default_model_path):
    flash_attn, engine = engine
    tokens = engine.tokenize(real_text())[:512]
    assert len(tokens) == 512
    ours = engine.logits(tokens)
    ref = reference_logits(default_model_path, tokens, n_ctx=1024, flash_attn=flash_attn)
    diff = report(f"smollm2 512 positions, flash_attn={flash_attn}", ours, ref)
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.99
    assert diff.max() <= 1e-3


def test_32_greedy_tokens_of_a_fixed_prompt_identical(engine, default_model_path):
    flash_attn, engine = engine
    prompt = engine.tokenize(
        engine.chat_prompt([{"role": "user", "content": "Write a short poem about the sea."}])
    )
    ours = list(engine.generate_tokens(prompt, max_tokens=32, stop_at_eog=False))
    assert ours == reference_greedy(default_model_path, prompt, 32, n_ctx=1024, flash_attn=flash_attn)
    assert len(set(ours)) > 5  # a real continuation, not a degenerate repeat

"""Every architecture graph against llama.cpp on tiny random-weight GGUFs, in both of llama.cpp's
attention settings: the engine's ``flash`` path against llama.cpp with flash attention, its
``matmul`` path against llama.cpp without.

The engine builds the same ggml ops as llama.cpp over the same kernels, with weights in the
same buffer types (repacked where llama.cpp repacks), so at equal batch sizes the logits agree to
the bit. Tolerance: max |diff| <= 1e-4 (logits have std 4-9), top-1 agreement 100%, and 32
identical greedy tokens. Different chunkings legitimately differ (float16 K/V paths) by up to
~0.5 on these chaotic random models, so each chunking is compared with the same one in llama.cpp.
(The engine's own ``kernel`` path rounds less than either setting, so it is compared with a
float64 reference instead: ``test_attention_paths.py``.)
"""

import numpy as np
import pytest
from conftest import LLAMA_CPP_PATH, match_llama_cpp
from indexmem import Engine
from parity import reference_greedy, reference_logits, report
from tiny_models import random_prompt

N_CTX = 256


def _check(name, ours, ref):
    diff = report(name, ours, ref)
    assert ours.shape == ref.shape
    assert diff.max() <= 1e-4
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))


FLASH_ATTN = pytest.mark.parametrize("flash_attn", [True, False], ids=["fa-on", "fa-off"])


@FLASH_ATTN
def test_logits_every_position_match_llama_cpp(tiny_model, flash_attn):
    arch, path = tiny_model
    tokens = random_prompt(100, seed=3)
    eng = Engine.load(str(path), n_ctx=N_CTX, attention=LLAMA_CPP_PATH[flash_attn], **match_llama_cpp())
    _check(arch, eng.logits(tokens), reference_logits(path, tokens, N_CTX, flash_attn=flash_attn))


@FLASH_ATTN
@pytest.mark.parametrize("n_batch", [1, 16])
def test_chunked_prefill_matches_llama_cpp_with_the_same_chunks(tiny_model, n_batch, flash_attn):
    arch, path = tiny_model
    tokens = random_prompt(60, seed=4)
    attention = LLAMA_CPP_PATH[flash_attn]
    eng = Engine.load(str(path), n_ctx=N_CTX, n_batch=n_batch, attention=attention, **match_llama_cpp())
    _check(
        f"{arch} n_batch={n_batch} {attention}",
        eng.logits(tokens),
        reference_logits(path, tokens, N_CTX, n_batch=n_batch, flash_attn=flash_attn),
    )


@FLASH_ATTN
def test_32_greedy_tokens_identical_to_llama_cpp(tiny_model, flash_attn):
    arch, path = tiny_model
    prompt = random_prompt(40, seed=5)
    eng = Engine.load(str(path), n_ctx=N_CTX, attention=LLAMA_CPP_PATH[flash_attn], **match_llama_cpp())
    ours = list(eng.generate_tokens(prompt, max_tokens=32, stop_at_eog=False))
    assert ours == reference_greedy(path, prompt, 32, N_CTX, flash_attn=flash_attn)

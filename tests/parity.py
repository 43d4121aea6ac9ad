"""Helpers comparing the engine with llama.cpp on the same GGUF."""

import numpy as np
from conftest import llama_cpp_reference


def reference_logits(path, tokens, n_ctx, n_batch=512, **kw):
    """llama.cpp's logits of every position (``kw``: flash_attn, type_k, type_v)."""
    ref = llama_cpp_reference(path, n_ctx=n_ctx, n_batch=n_batch, **kw)
    ref.eval(tokens)
    out = np.array(ref.scores[: len(tokens)], dtype=np.float32)
    ref.close()
    return out


def reference_greedy(path, prompt, n_new, n_ctx, **kw):
    ref = llama_cpp_reference(path, n_ctx=n_ctx, **kw)
    ref.eval(prompt)
    out = []
    for _ in range(n_new):
        token = int(np.argmax(ref.scores[ref.n_tokens - 1]))
        out.append(token)
        ref.eval([token])
    return out


def report(name, ours, ref):
    """llm.c-style one-line verdict, printed for `pytest -s` readers."""
    diff = np.abs(ours - ref)
    print(
        f"{name}: maxdiff {diff.max():.3g} median {np.median(diff):.3g} "
        f"top1 {np.mean(ours.argmax(-1) == ref.argmax(-1)):.4f}"
    )
    return diff

"""Tiny random-weight GGUF models written with gguf-py, one per supported architecture.

They carry a small SentencePiece-style vocabulary (byte fallback) so llama.cpp loads them as it
would a real model; the weights mix F32, F16, Q8_0 and Q4_0 so quantized kernels are exercised.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
]

ARCH_DEFAULTS = {
    # n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff
    "llama": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128),
    "qwen2": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128),
    "qwen3": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=32, n_ff=128),
    "gemma3": dict(n_layer=6, n_embd=64, n_head=4, n_head_kv=1, head_dim=32, n_ff=128),
}
GEMMA_WINDOW = 16  # small, so a ~100-token prompt exercises the sliding window


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    for w in WORDS:
        tokens += ["\u2581" + w]
        types += [1]
    for c in "abcdefghijklmnopqrstuvwxyz.,":
        tokens += [c]
        types += [1]
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def _add(writer, name, array, qtype=Q.F32):
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, array)
    elif qtype == Q.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def write_tiny_model(
    path: str | Path,
    arch: str,
    seed: int = 0,
    all_f32: bool = False,
    n_ctx_train: int = 2048,
    metadata: dict | None = None,
    **overrides,
) -> Path:
    """Write a tiny ``arch`` model to ``path`` and return it (``all_f32``: no quantized or f16
    weights, for references that should not emulate ggml's quantized matmuls; ``metadata``:
    extra keys, ints as int32, floats as float32)."""
    cfg = {**ARCH_DEFAULTS[arch], **overrides}
    rng = np.random.default_rng(seed)
    n_layer, n_embd, n_head, n_head_kv, hd, n_ff = (
        cfg["n_layer"],
        cfg["n_embd"],
        cfg["n_head"],
        cfg["n_head_kv"],
        cfg["head_dim"],
        cfg["n_ff"],
    )
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-6 if arch != "llama" else 1e-5)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
    if arch == "gemma3":
        w.add_sliding_window(GEMMA_WINDOW)
        w.add_rope_freq_base(100000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    for key, value in (metadata or {}).items():
        add = {int: w.add_int32, float: w.add_float32, str: w.add_string}[type(value)]
        add(key, value)

    add = (lambda writer, name, array, qtype=Q.F32: _add(writer, name, array)) if all_f32 else _add

    def normal(*shape, std):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def norm_weight(n):
        return (1.0 + 0.1 * rng.normal(size=n)).astype(np.float32)

    # numpy shape is ggml's reversed: (out, in) for a projection
    add(w, "token_embd.weight", normal(n_vocab, n_embd, std=1.0), Q.Q8_0)
    add(w, "output_norm.weight", norm_weight(n_embd))
    if arch != "gemma3":  # gemma3 ties the output to the embeddings
        add(w, "output.weight", normal(n_vocab, n_embd, std=0.5), Q.F16)
    for il in range(n_layer):
        p = f"blk.{il}."
        add(w, p + "attn_norm.weight", norm_weight(n_embd))
        add(w, p + "attn_q.weight", normal(n_head * hd, n_embd, std=0.3), Q.F16)
        add(w, p + "attn_k.weight", normal(n_head_kv * hd, n_embd, std=0.3), Q.Q8_0)
        add(w, p + "attn_v.weight", normal(n_head_kv * hd, n_embd, std=0.3), Q.F16)
        add(w, p + "attn_output.weight", normal(n_embd, n_head * hd, std=0.15), Q.Q8_0)
        add(w, p + "ffn_norm.weight", norm_weight(n_embd))
        add(w, p + "ffn_gate.weight", normal(n_ff, n_embd, std=0.15), Q.Q4_0)
        add(w, p + "ffn_up.weight", normal(n_ff, n_embd, std=0.15), Q.Q8_0)
        add(w, p + "ffn_down.weight", normal(n_embd, n_ff, std=0.1), Q.Q4_0)
        if arch == "qwen2":
            add(w, p + "attn_q.bias", normal(n_head * hd, std=0.1))
            add(w, p + "attn_k.bias", normal(n_head_kv * hd, std=0.1))
            add(w, p + "attn_v.bias", normal(n_head_kv * hd, std=0.1))
        if arch in ("qwen3", "gemma3"):
            add(w, p + "attn_q_norm.weight", norm_weight(hd))
            add(w, p + "attn_k_norm.weight", norm_weight(hd))
        if arch == "gemma3":
            add(w, p + "post_attention_norm.weight", norm_weight(n_embd))
            add(w, p + "post_ffw_norm.weight", norm_weight(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def random_prompt(n: int, seed: int = 0) -> list[int]:
    """``n`` token ids starting with BOS, drawn from the tiny vocabulary's word tokens."""
    rng = np.random.default_rng(seed)
    n_vocab = 259 + len(WORDS) + 28
    return [1] + rng.integers(3, n_vocab, size=n - 1).tolist()

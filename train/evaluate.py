"""Held-out evaluation of a checkpoint on teacher features.

Attention recall: the share of the teacher's max-pooled attention distribution (the stage-1
target, sinks excluded) that a kept set of ``budget`` tokens covers, when the whole sequence is
compressed once. The trained indexer is compared with heuristic scores computed on the same
features. Memory: how much of the residual ‖o_full − o_attn(kept)‖² the trained memory removes.

Fact recall (features of retrieval-shaped windows, whose manifest says where the facts are): the
share of the facts' tokens kept when the text before the questions is compressed once by the
queries of one prefill chunk that ends where the questions begin, as in chunked prefill, where
the question has not been read yet when the haystack is compressed. Chunked fact recall
(``train/rounds.py``): the same share after the whole window has been prefilled chunk by chunk
with a compression after every chunk, as the RULER benchmark runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..engine.eviction import budget_from_ratio
from .features import FeatureSet
from .fit import IndexMemModel, keep_top, memory_case
from .losses import indexer_importance, memory_loss, teacher_logits, window_importance
from .modules import IndexMemSizes
from .rounds import SNAPKV_WINDOW, cached_attention, fact_shares_chunked, snapkv_pool

FACT_CHUNK = 256  # queries of the prefill chunk that compresses the text before the questions
# RULER's 512-token chunks and 64-token recent window at 4K, scaled to 1K-token features
ROUNDS_CHUNK, ROUNDS_RECENT = 128, 16


def load_checkpoint(ckpt_dir: Path) -> tuple[IndexMemModel, dict]:
    from safetensors.torch import load_file

    config = json.loads((Path(ckpt_dir) / "config.json").read_text())
    model = IndexMemModel(config["n_layer"], IndexMemSizes(**config["sizes"]))
    model.load_state_dict(load_file(str(Path(ckpt_dir) / "weights.safetensors")))
    return model.eval(), config


def attention_probs(f: dict, scale: float) -> torch.Tensor:
    """Causal softmax attention probabilities [H, L, L] from the saved Q and K."""
    n = f["q_cur"].shape[0]
    return cached_attention(f, torch.arange(n), 0, n, scale)


def heuristic_scores(probs: torch.Tensor, accumulated: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each heuristic's importance from the attention ``probs`` [heads, queries, keys] of the
    queries that decide; H2O sums ``accumulated`` (every query so far) when given."""
    n = probs.shape[-1]
    return {
        "streaming": torch.arange(n, dtype=torch.float32),
        "h2o": (probs if accumulated is None else accumulated).sum((0, 1)),
        "snapkv": snapkv_pool(probs[:, -SNAPKV_WINDOW:, :].sum((0, 1))),
        "tova": probs[:, -1, :].sum(0),
    }


def chunk_scores(
    model, il: int, f: dict, probs: torch.Tensor, end: int, chunk: int
) -> dict[str, torch.Tensor]:
    """Every scorer's importance of the keys [0, end) when the queries [end - chunk, end) decide.
    ``probs`` are the causal attention probabilities of the whole sequence: a query before ``end``
    sees no key after it, so their first ``end`` rows and columns are those of the prefix alone.
    H2O's accumulated attention counts every query so far, as it does in the engine."""
    probs = probs[:, :end, :end]
    scores = heuristic_scores(probs[:, end - chunk :, :], accumulated=probs)
    scores["indexmem"] = window_importance(
        model.indexers[il], f["x"], f["q_pre"], end - chunk, end, grad=False
    )
    return scores


def fact_shares(
    scores: dict[str, torch.Tensor], facts: torch.Tensor, end: int, ratios, sinks: int, recent: int
):
    """(scorer, ratio, share of the ``facts`` token positions kept) when the text [0, end) is
    compressed once by ``scores``; the ``recent`` last tokens are protected as the engine's recent
    window protects them."""
    for name, score in scores.items():
        score = score.clone()
        score[end - recent :] = float("inf")
        for ratio in ratios:
            keep = keep_top(score, max(sinks + recent, round(end * (1 - ratio))), sinks)
            yield name, ratio, float(torch.isin(facts, keep).float().mean())


def _means(values: dict[str, dict[float, list[float]]]) -> dict[str, dict[str, float]]:
    return {name: {str(r): sum(v) / len(v) for r, v in by_ratio.items()} for name, by_ratio in values.items()}


@torch.no_grad()
def evaluate_model(
    fs: FeatureSet,
    model: IndexMemModel,
    layers: list[int],
    ratios=(0.75, 0.9),
    sinks: int = 4,
    n_trail: int = 64,
    memory_ratio: float = 0.9,
    chunk: int = FACT_CHUNK,
    recent: int = 64,
    rounds_chunk: int = ROUNDS_CHUNK,
    rounds_recent: int = ROUNDS_RECENT,
    gamma: float = 0.0,
) -> dict:
    """Every figure of the module docstring for ``model`` on the ``layers`` of ``fs``; fact recall
    only when the features' manifest says where the facts are. ``gamma``: the indexmem policy's
    carry-over in the chunked-prefill simulation."""
    scale = fs.manifest["kq_scale"]
    spans, starts = fs.manifest.get("fact_spans"), fs.manifest.get("questions_start")
    recall: dict[str, dict[float, list[float]]] = {}
    facts_kept: dict[str, dict[float, list[float]]] = {}
    facts_kept_chunked: dict[str, dict[float, list[float]]] = {}
    residual = {"without_memory": [], "with_memory": []}
    for seq in range(fs.n_sequences):
        for il in layers:
            f = fs.layer(seq, il)
            n = f["x"].shape[0]
            probs = attention_probs(f, scale)
            p_t = torch.softmax(teacher_logits(f["q_cur"], f["k_cur"], scale=scale)[sinks:], 0)
            scores = heuristic_scores(probs)
            scores["indexmem"] = indexer_importance(model.indexers[il], f["x"], f["q_pre"], grad=False)
            for ratio in ratios:
                budget = max(sinks + 1, round(n * (1 - ratio)))
                for name, s in scores.items():
                    keep = keep_top(s, budget, sinks)
                    covered = p_t[keep[keep >= sinks] - sinks].sum()
                    recall.setdefault(name, {}).setdefault(ratio, []).append(float(covered))
            if spans is not None:
                end = starts[seq]
                facts = torch.cat([torch.arange(a, b) for a, b in spans[seq]])
                for name, ratio, share in fact_shares(
                    chunk_scores(model, il, f, probs, end, chunk), facts, end, ratios, sinks, recent
                ):
                    facts_kept.setdefault(name, {}).setdefault(ratio, []).append(share)
                budgets = {ratio: budget_from_ratio(n, ratio) for ratio in ratios}
                for name, ratio, share in fact_shares_chunked(
                    f, facts, budgets, rounds_chunk, scale, sinks, rounds_recent, model.indexers[il], gamma
                ):
                    facts_kept_chunked.setdefault(name, {}).setdefault(ratio, []).append(share)
            case = memory_case(model.indexers[il], f, n_trail, memory_ratio, sinks, scale)
            o_full, o_kept = case[:2]
            residual["without_memory"].append(float(((o_full - o_kept) ** 2).sum(-1).mean()))
            residual["with_memory"].append(float(memory_loss(model.memories[il], *case)))
    without = sum(residual["without_memory"]) / len(residual["without_memory"])
    with_mem = sum(residual["with_memory"]) / len(residual["with_memory"])
    return {
        "sequences": fs.n_sequences,
        "layers": layers,
        "recall": _means(recall),
        "residual_at_evict_ratio": memory_ratio,
        "residual_without_memory": without,
        "residual_with_memory": with_mem,
        "residual_reduction": 1.0 - with_mem / without,
        **(
            {"fact_recall": _means(facts_kept), "fact_recall_chunked": _means(facts_kept_chunked)}
            if facts_kept
            else {}
        ),
    }


def evaluate(features_dir: Path, ckpt_dir: Path, **options) -> dict:
    """``evaluate_model`` for the checkpoint in ``ckpt_dir`` on the layers it was trained for."""
    model, config = load_checkpoint(ckpt_dir)
    return evaluate_model(FeatureSet(features_dir), model, config["global_layers"], **options)

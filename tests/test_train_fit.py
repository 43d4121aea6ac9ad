"""Fitting runs end to end on tiny features, checkpoints atomically and resumes exactly."""

import json

import torch
from indexmem import Engine
from indexmem.train.evaluate import evaluate
from indexmem.train.features import FeatureSet, extract
from indexmem.train.fit import FitConfig, Trainer, fit
from indexmem.train.modules import IndexMemSizes
from safetensors.torch import load_file
from tiny_models import random_prompt


def _features(tmp_path, tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=256, n_batch=64)
    extract(eng, [random_prompt(96, seed=s) for s in range(3)], tmp_path / "feat", chunk=64)
    return tmp_path / "feat"


def _cfg(**kw):
    base = dict(
        stage1_steps=4,
        stage2_steps=4,
        warmup=2,
        decay_steps=3,
        layers_per_step=0,
        n_trail=16,
        block=32,
        checkpoint_every=2,
        seed=3,
    )
    return FitConfig(**{**base, **kw})


def test_fit_writes_a_checkpoint_and_eval_reads_it(tmp_path, tiny_llama):
    feat = _features(tmp_path, tiny_llama)
    summary = fit(feat, tmp_path / "ckpt", _cfg())
    assert summary["steps"] == 8 and summary["final_mem_loss"] > 0
    weights = load_file(str(tmp_path / "ckpt" / "weights.safetensors"))
    assert "indexers.0.U_q.weight" in weights and "memories.1.phi.weight" in weights
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["base_sha256"] and config["sizes"]["d_idx"] == 2
    result = evaluate(feat, tmp_path / "ckpt", n_trail=16)
    assert set(result["recall"]) == {"streaming", "h2o", "snapkv", "tova", "indexmem"}
    assert all(0.0 <= v <= 1.0 for by_ratio in result["recall"].values() for v in by_ratio.values())
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


class Interrupted(Exception):
    pass


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path, tiny_llama):
    feat = _features(tmp_path, tiny_llama)
    fit(feat, tmp_path / "straight", _cfg())

    def stop_after_5(record):
        if record["step"] == 5:
            raise Interrupted  # the last checkpoint was written at step 4

    try:
        fit(feat, tmp_path / "resumed", _cfg(), on_step=stop_after_5)
    except Interrupted:
        pass
    assert not (tmp_path / "resumed" / "weights.safetensors").exists()
    trainer = Trainer(FeatureSet(feat), tmp_path / "resumed", _cfg())
    assert trainer.resume() and trainer.step == 4
    fit(feat, tmp_path / "resumed", _cfg())
    a = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_training_lowers_the_index_loss(tmp_path, tiny_llama):
    feat = _features(tmp_path, tiny_llama)
    torch.manual_seed(0)
    trainer = Trainer(
        FeatureSet(feat),
        tmp_path / "c",
        _cfg(stage1_steps=40, stage2_steps=0, lr=1e-2, decay_steps=5, warmup=2),
    )
    losses = [trainer.train_step()["index"] for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_student_window_fits_one_window_of_queries_to_the_teacher_over_all(tmp_path, tiny_llama):
    import random

    from indexmem.train.losses import kl_loss, window_importance

    feat = _features(tmp_path, tiny_llama)
    trainer = Trainer(FeatureSet(feat), tmp_path / "c", _cfg(student_window=32))
    f = trainer.fs.layer(1, 0)
    trainer.rng.seed(11)
    end = random.Random(11).randrange(32, 97)  # what the trainer draws for 96-token features
    loss, _ = trainer.layer_loss(1, 0, stage=1)
    teacher = trainer.teacher(1, 0, f)
    assert teacher.shape == (96,)
    with torch.no_grad():
        expected = kl_loss(
            teacher[:end],
            window_importance(trainer.model.indexers[0], f["x"], f["q_pre"], end - 32, end),
            trainer.cfg.sinks,
        )
    torch.testing.assert_close(loss.detach(), expected)
    # the paper's rule is a different loss on the same features
    full, _ = Trainer(FeatureSet(feat), tmp_path / "d", _cfg()).layer_loss(1, 0, stage=1)
    assert not torch.isclose(full.detach(), loss.detach())


def test_fact_recall_counts_the_fact_tokens_each_scorer_keeps(tmp_path, tiny_llama):
    from indexmem.train.evaluate import attention_probs, chunk_scores, evaluate_model
    from indexmem.train.fit import IndexMemModel

    eng = Engine.load(str(tiny_llama), n_ctx=256, n_batch=64)
    extract(
        eng,
        [random_prompt(96, seed=s) for s in range(2)],
        tmp_path / "feat",
        chunk=64,
        annotations={"fact_spans": [[[4, 10], [80, 86]], [[50, 60]]], "questions_start": [90, 90]},
    )
    fs = FeatureSet(tmp_path / "feat")
    torch.manual_seed(0)
    model = IndexMemModel(
        fs.n_layer, IndexMemSizes.paper(fs.manifest["d_model"], fs.manifest["n_head"], fs.manifest["d_head"])
    )
    result = evaluate_model(
        fs,
        model,
        layers=[0, 1],
        ratios=(0.75,),
        n_trail=16,
        chunk=32,
        recent=8,
        rounds_chunk=32,
        rounds_recent=8,
    )
    got = result["fact_recall"]
    # after three 32-token chunks streaming keeps the sinks and the last 20 of 96 (budget 24): of
    # the facts, 80-86 of the first sequence, so 6 of its 12 fact tokens and none of the second's
    assert result["fact_recall_chunked"]["streaming"]["0.75"] == 0.25
    assert set(result["fact_recall_chunked"]) == set(got)
    assert set(got) == {"streaming", "h2o", "snapkv", "tova", "indexmem"}
    # streaming keeps the sinks and the last 18 of 90 tokens (budget 22): the fact at 80-86 of the
    # first sequence only, so half of its fact tokens and none of the second's
    assert got["streaming"]["0.75"] == 0.25
    assert all(0.0 <= by_ratio["0.75"] <= 1.0 for by_ratio in got.values())
    everything = evaluate_model(fs, model, layers=[0], ratios=(0.0,), n_trail=16, chunk=32, recent=8)[
        "fact_recall"
    ]
    assert all(by_ratio["0.0"] == 1.0 for by_ratio in everything.values())
    # the prefix's attention is the whole sequence's first rows and columns (causal), which is why
    # evaluate_model can reuse the probabilities it computed for attention recall
    f, end = fs.layer(0, 1), 90
    prefix = {k: v[:end] for k, v in f.items()}
    from_whole = chunk_scores(model, 1, f, attention_probs(f, fs.manifest["kq_scale"]), end, 32)
    from_prefix = chunk_scores(model, 1, f, attention_probs(prefix, fs.manifest["kq_scale"]), end, 32)
    for name, score in from_prefix.items():
        torch.testing.assert_close(from_whole[name], score)

"""Fitting runs end to end on tiny features, checkpoints atomically and resumes exactly."""

import json

import torch
from safetensors.torch import load_file

from indexmem import Engine
from indexmem.train.evaluate import evaluate
from indexmem.train.features import extract
from indexmem.train.fit import FitConfig, Trainer, fit
from indexmem.train.features import FeatureSet
from tiny_models import random_prompt


def _features(tmp_path, tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=256, n_batch=64)
    extract(eng, [random_prompt(96, seed=s) for s in range(3)], tmp_path / "feat", chunk=64)
    return tmp_path / "feat"


def _cfg(**kw):
    base = dict(stage1_steps=4, stage2_steps=4, warmup=2, decay_steps=3, layers_per_step=0, n_trail=16,
                block=32, checkpoint_every=2, seed=3)
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
    trainer = Trainer(FeatureSet(feat), tmp_path / "c", _cfg(stage1_steps=40, stage2_steps=0, lr=1e-2,
                                                            decay_steps=5, warmup=2))
    losses = [trainer.train_step()["index"] for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5

"""Teacher features come from the engine and reproduce its attention output."""

import numpy as np
from indexmem import Engine
from indexmem.train.features import ATTENTION_TOLERANCE, FeatureSet, extract, verify_attention
from tiny_models import random_prompt


def test_extracted_features_reproduce_the_attention_output(tmp_path, tiny_model):
    arch, path = tiny_model
    eng = Engine.load(str(path), n_ctx=256, n_batch=16)
    seqs = [random_prompt(48, seed=s) for s in range(2)]
    manifest = extract(eng, seqs, tmp_path / "feat", chunk=16)
    fs = FeatureSet(tmp_path / "feat")
    assert manifest["n_sequences"] == 2 and fs.n_layer == eng.hparams.n_layer
    f = fs.layer(1, fs.n_layer - 1)
    assert f["x"].shape == (48, eng.hparams.n_embd)
    assert f["q_pre"].shape == (48, eng.hparams.n_head, eng.hparams.head_dim)
    for il in range(fs.n_layer):
        # float16 storage of Q, K, V and the output
        assert verify_attention(fs, 1, il) < ATTENTION_TOLERANCE, (arch, il)
    # and the check fails when the saved output is off by 5% of its range on one token
    o = np.load(tmp_path / "feat" / "seq0001.o.npy")
    o[0, 7] += (0.05 * np.abs(o[0]).max()).astype(o.dtype)
    np.save(tmp_path / "feat" / "seq0001.o.npy", o)
    assert verify_attention(FeatureSet(tmp_path / "feat"), 1, 0) > ATTENTION_TOLERANCE


def test_features_match_a_direct_capture(tmp_path, tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=128, n_batch=64)
    tokens = random_prompt(30, seed=9)
    extract(eng, [tokens], tmp_path / "f", chunk=64)
    eng.reset()
    _, cap = eng.runner.step(np.array(tokens), np.arange(30), capture=["Qpre-1", "kqv_out-0"])
    fs = FeatureSet(tmp_path / "f")
    np.testing.assert_allclose(
        fs.layer(0, 1)["q_pre"].reshape(30, -1).numpy(),
        cap["Qpre-1"].reshape(30, -1).astype(np.float16).astype(np.float32),
    )
    np.testing.assert_allclose(
        fs.layer(0, 0)["o"].numpy(), cap["kqv_out-0"].reshape(30, -1).astype(np.float16).astype(np.float32)
    )


def test_a_feature_set_keeps_few_files_mapped(tmp_path, tiny_llama, monkeypatch):
    """Training reads layers of many sequences; every file left mapped would keep the pages it was
    read through resident, so a long fit would hold a whole shard. Reads stay right after their
    map was closed."""
    import indexmem.train.features as features

    monkeypatch.setattr(features, "OPEN_MAPS", 3)
    eng = Engine.load(str(tiny_llama), n_ctx=128, n_batch=32)
    extract(eng, [random_prompt(20, seed=s) for s in range(4)], tmp_path / "f", chunk=32)
    fs = FeatureSet(tmp_path / "f")
    first = {stem: t.clone() for stem, t in fs.layer(0, 1).items()}
    for seq in range(4):
        fs.layer(seq, 0)
        assert len(fs._maps) <= 3
    assert len(fs._maps) == 3 and (0, "x") not in fs._maps
    again = fs.layer(0, 1)
    for stem, t in first.items():
        assert (again[stem] == t).all(), stem
    direct = np.load(tmp_path / "f" / "seq0000.x.npy")[1].astype(np.float32)
    np.testing.assert_array_equal(again["x"].numpy().reshape(direct.shape), direct)

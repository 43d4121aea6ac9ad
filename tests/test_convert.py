"""Checkpoint → GGUF: round trip, merged files in llama.cpp, wrong pairings, interrupted writes."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from indexmem import ModelFormatError
from indexmem.convert import schema as S
from indexmem.convert.reader import load_indexmem
from indexmem.convert.writer import convert, read_checkpoint
from indexmem.train.features import extract
from indexmem.train.fit import FitConfig, fit
from tiny_models import random_prompt, write_tiny_model

SHIPPED = __import__("pathlib").Path(__file__).resolve().parent.parent / "checkpoints"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_llama):
    from indexmem import Engine

    root = tmp_path_factory.mktemp("conv")
    eng = Engine.load(str(tiny_llama), n_ctx=128, n_batch=64)
    extract(eng, [random_prompt(64, seed=s) for s in range(2)], root / "feat", chunk=64)
    fit(
        root / "feat",
        root / "ckpt",
        FitConfig(
            stage1_steps=2, stage2_steps=2, warmup=1, decay_steps=1, layers_per_step=0, n_trail=16, block=32
        ),
    )
    return root / "ckpt"


@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("f16", 1e-3), ("q8_0", 2e-2)])
def test_round_trip(tiny_ckpt, tiny_llama, tmp_path, dtype, tol):
    out = convert(tiny_ckpt, tiny_llama, tmp_path / f"side-{dtype}.gguf", dtype=dtype)
    loaded = load_indexmem(out, base_path=tiny_llama)
    config, weights = read_checkpoint(tiny_ckpt)
    assert loaded.layers == list(range(config["n_layer"]))
    for il in loaded.layers:
        for suffix, (param, _) in S.LAYER_TENSORS.items():
            ours, ref = loaded.tensors[S.tensor_name(il, suffix)], weights[param.format(il=il)]
            assert ours.shape == ref.shape
            scale = max(1.0, float(np.abs(ref).max()))
            assert np.abs(ours - ref).max() <= tol * scale, (suffix, dtype)


def test_merged_file_runs_in_llama_cpp_unchanged(tiny_ckpt, tiny_llama, tmp_path):
    from conftest import llama_cpp_reference

    merged = convert(tiny_ckpt, tiny_llama, tmp_path / "merged.gguf", merge=True)
    assert load_indexmem(merged).layers  # the merged file validates against itself
    tokens = random_prompt(20, seed=1)
    outs = []
    for path in (tiny_llama, merged):
        ref = llama_cpp_reference(path, n_ctx=64)
        ref.eval(tokens)
        outs.append(np.array(ref.scores[:20]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_wrong_model_is_refused(tiny_ckpt, tiny_llama, tmp_path):
    other = write_tiny_model(tmp_path / "other.gguf", "llama", seed=99)  # same shapes, other weights
    with pytest.raises(ModelFormatError, match="not the file the checkpoint was trained on"):
        convert(tiny_ckpt, other, tmp_path / "x.gguf")
    bigger = write_tiny_model(tmp_path / "bigger.gguf", "llama", seed=2, n_layer=3)
    with pytest.raises(ModelFormatError, match="block_count"):
        convert(tiny_ckpt, bigger, tmp_path / "y.gguf")
    side = convert(tiny_ckpt, tiny_llama, tmp_path / "side.gguf")
    requantized = write_tiny_model(tmp_path / "q.gguf", "qwen2", seed=2)
    with pytest.raises(ModelFormatError, match="architecture"):
        load_indexmem(side, base_path=requantized)
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_corrupt_and_truncated_files(tiny_ckpt, tiny_llama, tmp_path):
    side = convert(tiny_ckpt, tiny_llama, tmp_path / "side.gguf")
    data = side.read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFormatError):
        load_indexmem(tmp_path / "trunc.gguf")
    bad = data.replace(b"indexmem.format_version", b"indexmem.format_versioX")
    (tmp_path / "key.gguf").write_bytes(bad)
    with pytest.raises(ModelFormatError, match="format_version"):
        load_indexmem(tmp_path / "key.gguf")
    with pytest.raises(ModelFormatError, match="no IndexMem modules"):
        load_indexmem(tiny_llama)


def test_cli_exit_codes(tiny_ckpt, tiny_llama, tmp_path):
    exe = shutil.which("indexmem-convert")
    cmd = [exe] if exe else [sys.executable, "-m", "indexmem.cli.convert"]
    ok = subprocess.run(
        cmd + [str(tiny_ckpt), "--base", str(tiny_llama), "-o", str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    shown = subprocess.run(
        cmd + ["inspect", str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0 and "indexmem.format_version" in shown.stdout
    other = write_tiny_model(tmp_path / "other.gguf", "llama", seed=98)
    for args in (
        [str(tmp_path), "--base", str(tiny_llama)],  # not a checkpoint
        [str(tiny_ckpt), "--base", str(other)],  # another model
        [str(tiny_ckpt), "--base", str(tmp_path / "o.gguf")[:-3]],
    ):  # no such base
        bad = subprocess.run(
            cmd + args + ["-o", str(tmp_path / "p.gguf")], capture_output=True, text=True, timeout=120
        )
        assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr, args
        assert not (tmp_path / "p.gguf").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_conversion_leaves_no_output_and_an_intact_base(default_model_path, tmp_path, sig):
    """A merged conversion of the real default model with its shipped checkpoint takes
    seconds; interrupt it midway."""
    from indexmem.engine.registry import sha256_of

    ckpt = SHIPPED / "smollm2-135m-instruct"
    base = tmp_path / "base.gguf"
    shutil.copy(default_model_path, base)
    before = sha256_of(base)
    out = tmp_path / "out.gguf"
    script = (
        "import sys; from indexmem.convert.writer import convert; "
        "convert(sys.argv[1], sys.argv[2], sys.argv[3], merge=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(ckpt), str(base), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("out.gguf.*.tmp")):
        time.sleep(0.05)
    assert list(tmp_path.glob("out.gguf.*.tmp")), "the conversion never started writing"
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob("out.gguf*"))
    assert sha256_of(base) == before


def test_shipped_smollm2_merged_runs_in_llama_cpp(default_model_path, tmp_path):
    from conftest import llama_cpp_reference

    merged = convert(
        SHIPPED / "smollm2-135m-instruct", default_model_path, tmp_path / "m.gguf", merge=True, dtype="f16"
    )
    assert len(load_indexmem(merged).layers) == 30
    outs = []
    for path in (default_model_path, merged):
        ref = llama_cpp_reference(path, n_ctx=64)
        ref.eval([1, 504, 2365, 6354, 16438, 27003])
        outs.append(np.array(ref.scores[:6]))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("q8_0", 2e-2)])
def test_shipped_checkpoints_round_trip(name, dtype, tol, tmp_path):
    from indexmem.engine.registry import resolve

    ckpt = SHIPPED / name
    base = resolve(name)
    side = convert(ckpt, base, tmp_path / "side.gguf", dtype=dtype)
    loaded = load_indexmem(side, base_path=base)
    _, weights = read_checkpoint(ckpt)
    for il in loaded.layers:
        for suffix, (param, _) in S.LAYER_TENSORS.items():
            ref = weights[param.format(il=il)]
            scale = max(1.0, float(np.abs(ref).max()))
            assert np.abs(loaded.tensors[S.tensor_name(il, suffix)] - ref).max() <= tol * scale


@pytest.mark.parametrize(
    "name,pool_kernel",
    [
        ("smollm2-135m-instruct", 31),
        ("gemma3-270m", None),
        ("qwen2.5-coder-0.5b-instruct", None),
        ("qwen2.5-coder-1.5b-instruct", None),
    ],
)
def test_shipped_sidecars_are_their_checkpoints_converted_as_documented(name, pool_kernel, tmp_path):
    """checkpoints/README.md gives the commands that produced sidecars/; they still do, byte for byte."""
    from indexmem.engine.indexmem import SIDECAR_DIR
    from indexmem.engine.registry import MODELS, cache_dir, resolve

    if (
        name == "qwen2.5-coder-1.5b-instruct"
        and not (cache_dir() / "models" / MODELS[name].filename).is_file()
    ):
        pytest.skip("the 1.5B (1.1 GB from 22 packages) is checked where it is already installed")

    side = convert(
        SHIPPED / name, resolve(name), tmp_path / "side.gguf", dtype="f16", pool_kernel=pool_kernel
    )
    assert side.read_bytes() == (SIDECAR_DIR / MODELS[name].sidecar).read_bytes()


def test_a_memory_retrain_records_its_indexer_lineage_and_the_memory_layers(tiny_ckpt, tiny_llama, tmp_path):
    """``indexer_from``, ``memory_layers`` and ``pool_kernel`` of a checkpoint's config (as the
    end-to-end memory fit writes them) reach the sidecar, where results and the engine read them."""
    import json

    from indexmem.bench.specs import modules_file

    retrained = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, retrained)
    config = json.loads((retrained / "config.json").read_text())
    config.update(indexer_from="ab" * 32, memory_layers=[1], pool_kernel=5)
    (retrained / "config.json").write_text(json.dumps(config))
    out = convert(retrained, tiny_llama, tmp_path / "side.gguf")
    meta = load_indexmem(out, base_path=tiny_llama).meta
    assert meta[S.K_INDEXER_FROM] == "ab" * 32 and list(meta[S.K_MEMORY_LAYERS]) == [1]
    assert meta[S.K_POOL] == 5
    assert modules_file(out).indexer_sha256 == "ab" * 32
    plain = convert(tiny_ckpt, tiny_llama, tmp_path / "plain.gguf")
    assert S.K_INDEXER_FROM not in load_indexmem(plain, base_path=tiny_llama).meta
    assert modules_file(plain).indexer_sha256 == modules_file(plain).sha256

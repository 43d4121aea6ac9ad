"""Broken or unsupported files give a clean indexmem error (and a non-zero CLI exit), never a crash."""

import os
import shutil
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
from indexmem import Engine, ModelFormatError, UnsupportedModelError
from tiny_models import write_tiny_model


def _rewrite_without(src, dst, drop_tensor=None, arch=None, reshape=None):
    """Copy a GGUF with gguf-py, dropping a tensor, renaming the architecture or changing a shape."""
    reader = gguf.GGUFReader(str(src))
    new_arch = arch or "llama"
    w = gguf.GGUFWriter(str(dst), new_arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        name = field.name.replace("llama.", f"{new_arch}.", 1) if arch else field.name
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), vtype)
    for t in reader.tensors:
        if t.name == drop_tensor:
            continue
        data = np.array(t.data)
        if reshape and t.name == reshape:
            data = data[: data.shape[0] // 2]
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("bad") / "good.gguf", "llama", seed=7)


def test_good_file_loads(good):
    assert Engine.load(str(good), n_ctx=64).hparams.arch == "llama"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        Engine.load(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelFormatError, match="directory"):
        Engine.load(str(tmp_path))


def test_wrong_magic(good, tmp_path):
    bad = tmp_path / "magic.gguf"
    data = bytearray(good.read_bytes())
    data[:4] = b"GGML"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        Engine.load(str(bad))


@pytest.mark.parametrize("keep", [10, 200, 0.5, 0.999])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[:n])
    with pytest.raises(ModelFormatError):
        Engine.load(str(bad))


def test_implausible_counts_are_refused_before_parsing(good, tmp_path):
    data = bytearray(good.read_bytes())
    data[8:16] = struct.pack("<Q", 1 << 40)  # tensor count
    bad = tmp_path / "counts.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="implausible"):
        Engine.load(str(bad))


@pytest.mark.parametrize(
    "edit,error,message",
    [
        (dict(drop_tensor="blk.1.ffn_up.weight"), ModelFormatError, "blk.1.ffn_up.weight is missing"),
        (dict(reshape="blk.0.attn_norm.weight"), ModelFormatError, "blk.0.attn_norm.weight has shape"),
        (dict(arch="mamba"), UnsupportedModelError, "architecture 'mamba' is not supported"),
    ],
    ids=["missing-tensor", "misshaped-tensor", "unknown-architecture"],
)
def test_inconsistent_model_files(good, tmp_path, edit, error, message):
    bad = _rewrite_without(good, tmp_path / "edited.gguf", **edit)
    with pytest.raises(error, match=message):
        Engine.load(str(bad))


def test_cli_exits_nonzero_with_a_message(good, tmp_path):
    bad = tmp_path / "cli.gguf"
    bad.write_bytes(good.read_bytes()[:100])
    exe = shutil.which("indexmem-chat")
    cmd = [exe] if exe else [sys.executable, "-m", "indexmem.cli.chat"]
    result = subprocess.run(
        cmd + ["--model", str(bad), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr

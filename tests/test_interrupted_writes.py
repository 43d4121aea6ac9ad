"""Writers SIGKILLed mid-write (converter, session save, training checkpoints): the previous file
is intact, byte for byte, and the temporary file the killed writer leaves is recognised as stale
and removed by the next write of that file.

Two kinds of kill: from outside after a random delay once writing has begun (real timing), and
from inside the atomic write after a chosen number of bytes or just before the rename
(``interrupted_child.py``)."""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from indexmem.atomic import stale_temps, write_atomic
from indexmem.convert.reader import load_indexmem
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)
from test_train_fit import _features

CHILD = Path(__file__).with_name("interrupted_child.py")
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*.tmp"))


def _run(writer: str, *args, kill_at: str | None = None, record: Path | None = None, timeout=120):
    env = dict(os.environ)
    if kill_at:
        env.update(KILL_AT=kill_at, KILL_RECORD=str(record))
    return subprocess.run(
        [sys.executable, str(CHILD), writer, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_killed_mid_write(result, target: Path, before: str):
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert _sha(target) == before  # the previous file, untouched
    left = _temps(target)
    assert len(left) == 1 and stale_temps(target) == left  # what the kill left is known to be stale


# --- from inside the atomic write --------------------------------------------------------------
@pytest.mark.parametrize("point", ["0", "100", "66000", "rename"])
def test_session_save_killed_inside_the_write(setup, tmp_path, point):  # noqa: F811
    base, side, _ = setup
    target, record = tmp_path / "chat.session", tmp_path / "record"
    assert _run("session", base, side, target).returncode == 0
    before = _sha(target)
    result = _run("session", base, side, target, 2, kill_at=f"2:{point}", record=record)
    assert record.read_text() == before
    _assert_killed_mid_write(result, target, before)
    assert _temps(target)[0].stat().st_size == (target.stat().st_size if point == "rename" else int(point))
    assert _run("session", base, side, target, 2).returncode == 0  # the next saves clean up
    assert _temps(target) == [] and _sha(target) != before


# 1000 bytes: inside the metadata (gguf-py writes the tensors with numpy.tofile, past any write())
@pytest.mark.parametrize("point", ["1000", "rename"])
def test_conversion_killed_inside_the_write(setup, tmp_path, point):  # noqa: F811
    base, side, _ = setup
    ckpt = side.parent / "ckpt"
    target, record = tmp_path / "side.gguf", tmp_path / "record"
    write_atomic(target, b"the previous conversion")
    before = _sha(target)
    result = _run("convert", ckpt, base, target, kill_at=f"1:{point}", record=record)
    assert record.read_text() == before
    _assert_killed_mid_write(result, target, before)
    assert _run("convert", ckpt, base, target).returncode == 0
    assert _temps(target) == [] and load_indexmem(target, base_path=base).layers == [0, 1]


@pytest.mark.parametrize("point", ["100", "rename"])
def test_training_checkpoint_killed_inside_the_write(tmp_path, tiny_llama, point):
    feat = _features(tmp_path, tiny_llama)
    out, record = tmp_path / "ckpt", tmp_path / "record"
    target = out / "trainer_state.pt"
    # writes 1..3 are the checkpoints after steps 1..3: the third is interrupted
    result = _run("train", feat, out, 6, kill_at=f"3:{point}", record=record)
    before = record.read_text()
    _assert_killed_mid_write(result, target, before)
    assert torch.load(target, weights_only=False)["step"] == 2
    assert _run("train", feat, out, 6).returncode == 0  # resumes from step 2 and finishes
    assert list(out.glob("*.tmp")) == [] and (out / "weights.safetensors").exists()


# --- from outside, after random delays -----------------------------------------------------------
def test_merged_conversion_killed_at_random_times(default_model_path, tmp_path):
    """Merging the real default model writes ~100 MB: kill it at random moments of the write."""
    ckpt = SHIPPED / "smollm2-135m-instruct"
    base = tmp_path / "base.gguf"
    shutil.copy(default_model_path, base)
    base_sha = _sha(base)
    target = tmp_path / "merged.gguf"
    write_atomic(target, b"the previous merged model")
    before = _sha(target)
    rng = random.Random(0)
    killed = 0
    for delay in (0.0, rng.uniform(0.05, 1.0), rng.uniform(1.0, 2.5)):  # the write takes ~4 s here
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "convert", str(ckpt), str(base), str(target), "merge"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while not _temps(target) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
            _assert_killed_mid_write(subprocess.CompletedProcess([], proc.returncode, "", ""), target, before)
            killed += 1
        else:  # a machine fast enough to finish first: then the new file is complete
            assert proc.returncode == 0 and len(load_indexmem(target).layers) == 30
        # a killed writer's leftover goes with the next write, here a small unrelated one
        write_atomic(target, b"the previous merged model")
        assert _temps(target) == [] and _sha(target) == before
    assert killed >= 1
    assert _sha(base) == base_sha  # the model is only ever read


def test_training_killed_at_random_times_resumes_from_an_intact_checkpoint(tmp_path, tiny_llama):
    feat = _features(tmp_path, tiny_llama)
    out = tmp_path / "ckpt"
    rng = random.Random(1)
    steps_seen = []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "train", str(feat), str(out), "400"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while not (out / "trainer_state.pt").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        steps_seen.append(torch.load(out / "trainer_state.pt", weights_only=False)["step"])  # complete
        leftovers = stale_temps(out / "trainer_state.pt") + stale_temps(out / "weights.safetensors")
        assert sorted(out.glob("*.tmp")) == sorted(leftovers)  # anything left is known to be stale
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > 0  # each run resumed where the last stopped
    assert _run("train", feat, out, 2).returncode == 0  # a run that finishes writes and cleans up
    assert list(out.glob("*.tmp")) == [] and (out / "weights.safetensors").exists()

"""``indexmem-train auto`` end to end on a tiny model and a small offline corpus: the plan, the
features streamed in shards (deleted once used), every stage, the validated sidecar, the report;
killed in the middle and run again, it resumes where it stopped."""

import json

import pytest
from indexmem.convert.reader import load_indexmem
from indexmem.train.auto import make_plan
from indexmem.train.auto_run import STAGES, AutoRun
from tiny_models import WORDS, write_tiny_model


class Killed(Exception):
    pass


def small_corpus(root):
    """A corpus as ``prepare`` leaves it (which would download its packages), of the tiny
    model's words."""
    root.mkdir(parents=True)
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + "." for i in range(30000)]
    (root / "train.txt").write_text("\n".join(lines[:25000]))
    (root / "heldout.txt").write_text("\n".join(lines[25000:]))
    (root / "corpus.json").write_text("{}")
    return root


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("INDEXMEM_CACHE", str(tmp_path / "cache"))
    return small_corpus(tmp_path / "cache" / "corpus")


def test_auto_runs_every_stage_streams_shards_and_resumes(tmp_path, corpus):
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=5, all_f32=True, n_ctx_train=4096)
    out = tmp_path / "tiny.indexmem.gguf"
    plan = make_plan(
        str(model), out, hours=0.0005, threads=1, disk_cap_gb=0.008, seq_len=2048, tokens=2048 * 12
    )
    assert len(plan.shards) >= 2, plan.shards  # the disk cap splits the features
    assert plan.shard_bytes() <= plan.disk_cap
    assert any("indexer" in line for line in plan.describe())

    def kill_in_second_shard(stage, done, total, info=""):
        if stage == "features" and info.startswith("shard 2/") and done == 2:
            raise Killed

    with pytest.raises(Killed):
        AutoRun(plan, kill_in_second_shard).run()
    state = json.loads((plan.work_path / "state.json").read_text())
    assert state["done"] == ["corpus"] and state["shards_done"] == 1
    assert not (plan.work_path / "shard000").exists()  # used, then deleted

    report = AutoRun(plan).run()
    assert report["feature_tokens"] == sum(plan.shards) * 2048
    assert set(report["stage_seconds"]) == set(STAGES)
    assert report["peak_disk_bytes"] > 0 and report["peak_rss_bytes"] > 0
    assert report["indexer_steps"] >= 100
    assert set(report["validation"]) >= {"full", "indexmem-nomem @ 0.9"}
    assert not list(plan.work_path.glob("shard*"))
    imf = load_indexmem(out, base_path=model)  # paired with its model, as the engine checks it
    assert imf.layers == [0, 1]
    saved = json.loads(out.with_suffix(".report.json").read_text())
    assert saved["wall_seconds"] == report["wall_seconds"]
    # a finished run run again does nothing more
    assert AutoRun(plan).run()["stage_seconds"] == report["stage_seconds"]

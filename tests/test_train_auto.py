"""``indexmem-train auto`` end to end on a tiny model and a small offline corpus: the plan, the
features streamed in shards (deleted once used), every stage, the validated sidecar, the report;
killed in the middle and run again, it resumes where it stopped."""

import json

import numpy as np
import pytest
from indexmem.convert.reader import load_indexmem
from indexmem.train.auto import (
    HELDOUT_MAX,
    HELDOUT_MIN,
    HELDOUT_SHARE,
    MIN_MEMORY_STEPS,
    SHARES,
    STEP_FORWARDS,
    AutoPlan,
    make_plan,
    plan_memory,
)
from indexmem.train.auto_run import STAGES, AutoRun
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)
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
        str(model),
        out,
        hours=0.0005,
        threads=1,
        disk_cap_gb=0.008,
        seq_len=2048,
        tokens=2048 * 12,
        memory=True,
    )
    assert plan.memory_steps >= 1 and plan.student_tok_s > 0  # forced on, whatever the budget
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
    first_attempt = state["seconds"]["indexer"]  # saved with the first shard
    assert first_attempt > 0
    assert not (plan.work_path / "shard000").exists()  # used, then deleted
    # planned again with other settings, the work folder's plan stands
    assert make_plan(str(model), out, hours=5.0, threads=2, memory=False) == plan

    report = AutoRun(plan).run()
    assert report["feature_tokens"] == sum(plan.shards) * 2048
    assert set(report["stage_seconds"]) == set(STAGES)
    assert report["stage_seconds"]["indexer"] > first_attempt  # both attempts counted
    assert report["peak_disk_bytes"] > 0 and report["peak_rss_bytes"] > 0
    assert 0 < report["peak_anon_bytes"] <= report["peak_rss_bytes"]
    shards = report["shard_anon_bytes"]  # one record per shard, across both attempts
    assert [r["shard"] for r in shards] == list(range(len(plan.shards)))
    assert all(0 < r["after"] and 0 < r["peak"] <= report["peak_anon_bytes"] for r in shards)
    assert report["indexer_steps"] >= 100
    assert set(report["validation"]) >= {"full", "indexmem-nomem @ 0.9"}
    assert not list(plan.work_path.glob("shard*"))
    imf = load_indexmem(out, base_path=model)  # paired with its model, as the engine checks it
    assert imf.layers == [0, 1]
    assert report["memory"]["memory_layers"] and report["memory"]["skipped"] is None
    saved = json.loads(out.with_suffix(".report.json").read_text())
    assert saved["wall_seconds"] == report["wall_seconds"]
    # a finished run run again does nothing more
    assert AutoRun(plan).run()["stage_seconds"] == report["stage_seconds"]


def test_memory_fit_can_start_from_shut_gates(tmp_path, corpus, setup):  # noqa: F811
    """``start_gate_bias`` replaces the file's gate biases before the fit: the held-out 'before'
    measures that memory, and one small step leaves the biases near the value set."""
    from indexmem.train.memory_fit import MemoryFitConfig
    from indexmem.train.memory_run import fit_memory
    from safetensors.numpy import load_file

    base, side, _ = setup
    gates, biases = {}, {}
    for bias in (None, -3.0):
        cfg = MemoryFitConfig(steps=1, lr=1e-4, warmup=1, ratios=(0.9,), start_gate_bias=bias)
        out = tmp_path / f"fit{bias}"
        report = fit_memory(base, side, corpus, out, cfg, seq_len=1024, n_windows=2, n_heldout=1)
        gates[bias] = report["before"]["gates"]
        config = json.loads((out / "config.json").read_text())
        assert config["memory_fit"]["start_gate_bias"] == bias
        weights = load_file(out / "weights.safetensors")
        biases[bias] = [float(v[0]) for k, v in sorted(weights.items()) if k.endswith("gate.bias")]
    for il, g in gates[-3.0].items():
        assert g < 0.25 < gates[None][il], (il, g, gates[None][il])
    assert len(biases[-3.0]) == 2 and all(abs(b + 3.0) < 0.01 for b in biases[-3.0])
    assert all(abs(b + 3.0) > 0.5 for b in biases[None])


@pytest.mark.parametrize("rule", ["mix", "share"])
def test_memory_fit_with_another_combine_rule_carries_it_into_the_file(tmp_path, corpus, setup, rule):  # noqa: F811
    """The rule reaches config.json and the converted file; a "share" fit's gates start at w = 0
    with per-layer biases calibrated to a mean gate of sigmoid(-3) ≈ 0.047 on a training window,
    so the held-out windows see nearly shut gates too, and the step count survives a resume."""
    from indexmem.convert import schema as S
    from indexmem.convert.writer import convert
    from indexmem.train.memory_fit import MemoryFitConfig
    from indexmem.train.memory_run import fit_memory
    from safetensors.numpy import load_file

    base, side, _ = setup
    with pytest.raises(ValueError, match="combine must be one of"):
        fit_memory(base, side, corpus, tmp_path / "bad", MemoryFitConfig(steps=1, combine="multiply"))
    cfg = MemoryFitConfig(steps=1, lr=1e-4, warmup=1, ratios=(0.9,), combine=rule, start_gate_bias=-3.0)
    out = tmp_path / "fit"
    report = fit_memory(base, side, corpus, out, cfg, seq_len=1024, n_windows=2, n_heldout=1)
    config = json.loads((out / "config.json").read_text())
    assert config["sizes"]["mem_combine"] == rule and config["memory_fit"]["combine"] == rule
    mixed = convert(out, base, tmp_path / "mix.gguf")
    assert load_indexmem(mixed, base_path=base).meta[S.K_MEM_COMBINE] == rule
    if rule == "share":
        assert all(g < 0.15 for g in report["before"]["gates"].values()), report["before"]["gates"]
        weights = load_file(out / "weights.safetensors")
        assert all(np.abs(v).max() < 1e-3 for k, v in weights.items() if k.endswith("gate.weight"))
        # run again with another step count: the finished fit keeps the one it saved
        again = MemoryFitConfig(steps=5, lr=1e-4, warmup=1, ratios=(0.9,), combine=rule, start_gate_bias=-3.0)
        fit_memory(base, side, corpus, out, again, seq_len=1024, n_windows=2, n_heldout=1)
        assert json.loads((out / "config.json").read_text())["steps"] == 1


def test_harm_counts_only_the_targets_the_memory_made_worse():
    import torch
    from indexmem.train.memory_fit import harm

    with_memory, without = torch.tensor([0.5, 0.1, 0.3, 0.9]), torch.tensor([0.2, 0.4, 0.3, 0.8])
    assert harm(with_memory, without).item() == pytest.approx((0.3 + 0.1) / 4)


def test_memory_fit_measures_the_harm_of_the_memory_against_the_bounded_model_without_it(
    tmp_path,
    corpus,
    setup,  # noqa: F811
):
    """With ``harm_weight`` every step also runs the bounded model without memory: a shut memory
    changes no target (harm 0), an open random one makes some worse; harm never exceeds the KL."""
    from indexmem.train.memory_fit import MemoryFitConfig
    from indexmem.train.memory_run import fit_memory

    base, side, _ = setup
    records, reports = {}, {}
    for bias in (-50.0, 3.0):
        cfg = MemoryFitConfig(
            steps=2, lr=1e-6, warmup=1, ratios=(0.9,), start_gate_bias=bias, harm_weight=4.0
        )
        on_step = records.setdefault(bias, []).append
        reports[bias] = fit_memory(
            base, side, corpus, tmp_path / f"fit{bias}", cfg, 1024, 2, 1, on_step=on_step
        )
    assert all(r["harm"] < 1e-6 for r in records[-50.0]), records[-50.0]
    assert all(1e-4 < r["harm"] <= r["kl"] for r in records[3.0]), records[3.0]
    config = json.loads((tmp_path / "fit3.0" / "config.json").read_text())
    assert config["memory_fit"]["harm_weight"] == 4.0
    # held out, a shut memory agrees with the model without it on every target's most likely token
    shut, without = reports[-50.0]["before"], reports[-50.0]["without_memory"]
    assert shut["top1"] == without["top1"] and 0 < without["top1"]["0.9"] <= 1, (shut, without)
    assert shut["0.9"] == pytest.approx(without["0.9"], abs=1e-6)


def test_a_plan_over_the_ram_target_holds_the_students_matrices_in_float16(tmp_path, monkeypatch):
    import indexmem.train.auto as auto

    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=5, all_f32=True, n_ctx_train=4096)
    small = make_plan(str(model), tmp_path / "a.gguf", hours=0.001, threads=1, seq_len=256, tokens=256)
    assert small.student_weights == "f32"  # a tiny model is far under the target
    monkeypatch.setattr(auto, "RAM_TARGET", small.peak_ram("f32") - 1)
    big = make_plan(str(model), tmp_path / "b.gguf", hours=0.001, threads=1, seq_len=256, tokens=256)
    assert big.student_weights == "f16"
    assert big.peak_ram() < big.peak_ram("f32")
    assert any("matrices in f16" in line for line in big.describe())


def slow_or_fast_plan(tok_s: float, hours: float = 2.0):
    return AutoPlan(
        model="m", model_path="m.gguf", out="o", work="w", hours=hours, threads=1, disk_cap=1e10,
        seq_len=2048, n_layer=24, bytes_per_token=1, prefill_tok_s=100.0, tokens=0, student_tok_s=tok_s,
    )  # fmt: skip


def test_the_plan_skips_the_memory_stage_when_its_share_cannot_pay_for_the_steps():
    fast = slow_or_fast_plan(tok_s=1000.0)  # a 2,048-token forward in ~2 s
    plan_memory(fast, None)
    budget = fast.seconds * SHARES["memory"]
    step = STEP_FORWARDS * fast.forward_seconds()
    assert fast.memory_steps >= MIN_MEMORY_STEPS and fast.heldout_windows == HELDOUT_MAX
    assert fast.heldout_seconds() <= HELDOUT_SHARE * budget
    assert fast.heldout_seconds() + fast.memory_steps * step <= budget  # the measures are in the budget
    assert fast.memory_train_seconds() == pytest.approx(budget - fast.heldout_seconds())
    assert fast.share("features") == SHARES["features"] and "end-to-end steps" in fast.describe_memory()

    slow = slow_or_fast_plan(tok_s=14.0)  # ~2.5 min a forward: a 1.5B model on one core
    plan_memory(slow, None)
    assert slow.memory_steps == 0 and slow.share("memory") == 0
    assert slow.share("features") + slow.share("indexer") == pytest.approx(
        SHARES["features"] + SHARES["indexer"] + SHARES["memory"]
    )
    assert "skipped" in slow.describe_memory() and "shut" in slow.describe_memory()

    forced = slow_or_fast_plan(tok_s=14.0)
    plan_memory(forced, True)
    assert forced.memory_steps >= 1 and forced.heldout_windows == HELDOUT_MIN
    off = slow_or_fast_plan(tok_s=1000.0)
    plan_memory(off, False)
    assert off.memory_steps == 0


def test_a_run_without_the_memory_stage_ships_the_indexer_with_no_memory_layer(tmp_path, corpus):
    from indexmem.engine.api import Engine

    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=5, all_f32=True, n_ctx_train=4096)
    out = tmp_path / "tiny.indexmem.gguf"
    plan = make_plan(str(model), out, hours=0.0005, threads=1, seq_len=2048, tokens=2048 * 2, memory=False)
    assert plan.memory_steps == 0 and plan.student_tok_s == 0  # the student is not even timed
    report = AutoRun(plan).run()
    assert report["memory"]["memory_layers"] == [] and "skipped" in report["memory"]["skipped"]
    meta = load_indexmem(out, base_path=model).meta
    assert meta["indexmem.memory.shut"] is True and "indexmem.memory_layers" not in meta
    prompt = [5 + i % 300 for i in range(400)]
    logits = {}
    for memory in (True, False):  # asked for or not, there is no memory to read
        engine = Engine.load(
            str(model),
            indexmem=str(out),
            policy="indexmem",
            budget=96,
            memory=memory,
            n_ctx=1024,
            n_threads=1,
        )
        try:
            logits[memory] = engine.logits(prompt)
            assert engine.stats()["memory"] is False
        finally:
            engine.close()
    np.testing.assert_array_equal(logits[True], logits[False])


def test_validation_leaves_out_the_memory_rows_of_a_sidecar_without_memory(tmp_path, corpus, setup):  # noqa: F811
    """A sidecar that carries no memory layer (the plan skipped the memory stage) would run the
    very same cache in its ``indexmem`` rows as in its ``indexmem-nomem`` ones: they are not run."""
    from indexmem.convert.writer import convert
    from indexmem.train.validate import validate_sidecar
    from test_indexmem import write_checkpoint

    base, side, modules = setup
    shut = convert(
        write_checkpoint(modules, "llama", tmp_path / "shut", memory_layers=[]), base, tmp_path / "s.gguf"
    )
    heldout = corpus / "heldout.txt"
    for sidecar, memory_rows in ((side, True), (shut, False)):
        rows = validate_sidecar(base, sidecar, heldout, seq_len=2048, count=1)
        assert {"full", "indexmem-nomem @ 0.75", "indexmem-nomem @ 0.9"} <= set(rows)
        assert ("indexmem @ 0.9" in rows) == memory_rows

"""Benchmark plumbing: configuration names, the needle prompt, the llama.cpp opener."""

import json

import pytest
from indexmem import Engine
from indexmem.bench.needle import (
    build_prompt,
    config_settings,
    measured_rows,
    run_settings,
    samples,
    summarize,
)
from indexmem.bench.retention import cached_share, needle_shares, policy_layer_mask, value_span
from indexmem.bench.specs import (
    ModulesFile,
    engine_options,
    measured_with_files,
    parse_specs,
    recall_settings,
)
from indexmem.engine.eviction import budget_from_ratio
from indexmem.engine.recall import N_QUERIES, PER_STEP
from tiny_models import WORDS


def test_configuration_names():
    assert engine_options("full", budget_from_ratio(4096, 0.9)) == dict(policy="full", indexmem=False)
    assert engine_options("indexmem", budget_from_ratio(4096, 0.9)) == dict(
        policy="indexmem", memory=True, budget=410, indexmem=None
    )
    assert engine_options("indexmem-nomem", budget_from_ratio(1000, 0.75), "s.gguf") == dict(
        policy="indexmem", memory=False, budget=250, indexmem="s.gguf"
    )
    assert engine_options("snapkv", budget_from_ratio(1000, 0.5)) == dict(
        policy="snapkv", memory=False, budget=500, indexmem=False
    )
    assert engine_options("tova+mem", 500)["memory"] is True
    assert engine_options("snapkv", 500, window=64)["window"] == 64
    assert engine_options("indexmem-nomem+recall", 500)["recall"] == "disk"
    assert "recall_per_step" not in engine_options("indexmem+recall", 500)
    assert engine_options("indexmem-nomem+recall16", 500)["recall_per_step"] == 16
    assert recall_settings("indexmem-nomem+recall16") == {"recall": {"per_step": 16, "n_queries": N_QUERIES}}
    assert recall_settings("indexmem+recall") == {"recall": {"per_step": PER_STEP, "n_queries": N_QUERIES}}
    assert engine_options("indexmem-nomem+recall16-end", 500)["recall_at"] == "prompt_end"
    assert engine_options("indexmem-nomem+recall-end-att", 500)["recall_score"] == "attention"
    assert recall_settings("indexmem-nomem+recall410-end-att")["recall"]["score"] == "attention"
    assert recall_settings("indexmem-nomem+recall-end") == {
        "recall": {"per_step": PER_STEP, "n_queries": N_QUERIES, "at": "prompt_end"}
    }
    assert recall_settings("indexmem-nomem") == {}
    for bad in (
        "bogus",
        "full+mem",
        "indexmem-nomem,nope",
        "snapkv+recall",
        "indexmem+recallx",
        "indexmem+recall-start",
    ):
        with pytest.raises(ValueError):
            parse_specs(bad)


def test_needle_prompt_holds_the_needle_at_its_depth_within_the_length(tiny_llama):
    eng = Engine.load(str(tiny_llama), n_ctx=1024)
    text = " ".join(WORDS[i % len(WORDS)] + ("." if i % 9 == 8 else "") for i in range(3000))
    haystack = eng.tokenize(text, add_special=False)
    where = []
    for case in samples(1, [0.1, 0.5, 0.9], seed=3):
        tokens = build_prompt(eng, haystack, 2500, case["depth"], case["key"], case["value"])
        assert 0.98 * 2500 <= len(tokens) <= 2500
        prompt = eng.detokenize(tokens).replace("\u2581", " ")  # the tiny vocabulary keeps its word marks
        assert f"{case['key']} is: {case['value']}." in prompt
        assert prompt.rstrip().endswith(f"{case['key']} mentioned in the provided text is")
        start, stop = prompt.index("afterwards.\n") + 12, prompt.rindex("\nWhat")
        where.append((prompt.index(case["value"]) - start) / (stop - start))
    # the needle goes after the first sentence end past its depth (sentences of 9 words here)
    assert all(abs(at - d) < 0.1 for at, d in zip(where, (0.1, 0.5, 0.9))), where


def test_needle_summary():
    rows = [
        dict(config="full", evict_ratio=0.0, depth=0.5, score=1),
        dict(config="x", evict_ratio=0.9, depth=0.5, score=0),
        dict(config="x", evict_ratio=0.9, depth=0.1, score=1),
    ]
    s = summarize(rows)
    assert s[("full", 0.0)]["score"] == 1.0 and s[("x", 0.9)]["score"] == 0.5
    assert s[("x", 0.9)]["by_depth"] == {0.1: 1.0, 0.5: 0.0}


S = ModulesFile("S", "S")


def test_rows_without_the_memory_carry_over_to_a_file_that_retrained_only_the_memory():
    """A file whose memory was retrained on a frozen indexer (``indexmem.indexer_from``) keeps the
    indexer-only rows of its parent; rows with a memory are its own."""
    child = ModulesFile("child", indexer_sha256="parent")
    row = dict(model_sha256="M")
    assert measured_with_files(dict(row, config="indexmem-nomem", indexmem_sha256="parent"), "M", child)
    assert not measured_with_files(dict(row, config="indexmem-nomem", indexmem_sha256="child"), "M", child)
    assert measured_with_files(dict(row, config="indexmem", indexmem_sha256="child"), "M", child)
    assert not measured_with_files(dict(row, config="indexmem", indexmem_sha256="parent"), "M", child)
    assert not measured_with_files(dict(row, config="snapkv+mem", indexmem_sha256="parent"), "M", child)
    assert measured_with_files(dict(row, config="snapkv", indexmem_sha256=None), "M", child)
    assert not measured_with_files(dict(row, config="indexmem", indexmem_sha256=None), "M", None)
    assert [child.for_config(c) for c in ("full", "tova", "indexmem-nomem", "indexmem", "h2o+mem")] == [
        None,
        None,
        "parent",
        "child",
        "child",
    ]


def test_needle_resumes_only_rows_measured_with_the_same_files(tmp_path):
    case = dict(evict_ratio=0.9, depth=0.5, key="k", value="1234567", score=1, context=4090)
    rows = [
        dict(case, config="tova"),  # written before rows recorded their files: taken as it is
        dict(case, config="snapkv+mem"),  # the same, but which memory it ran is unknown: measured again
        dict(case, config="snapkv", model_sha256="M", indexmem_sha256=None),
        dict(case, config="h2o", model_sha256="other model", indexmem_sha256=None),
        dict(case, config="indexmem", model_sha256="M", indexmem_sha256="S"),
        dict(case, config="indexmem-nomem", model_sha256="M", indexmem_sha256="before retraining"),
    ]
    out = tmp_path / "needle.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = run_settings(4096, None, 64, "essays", None)
    kept = {config for config, *_ in measured_rows(out, "M", S, settings)}
    assert kept == {"tova", "snapkv", "indexmem"}
    assert measured_rows(tmp_path / "missing.jsonl", "M", S, settings) == {}


def test_needle_resumes_only_rows_measured_with_the_same_settings(tmp_path):
    """Another length, prefill chunk, window, haystack or pool is another measurement; rows that
    predate recorded settings count for the defaults at the length their prompt fits."""
    settings = run_settings(4096, None, 64, "essays", None)
    case = dict(
        config="indexmem-nomem",
        evict_ratio=0.9,
        depth=0.5,
        key="k",
        value="1234567",
        score=1,
        context=4090,
        model_sha256="M",
        indexmem_sha256="S",
    )
    others = [
        dict(settings, target_context=8192),
        dict(settings, n_batch=512),
        dict(settings, window=256),
        dict(settings, haystack="python"),
        dict(settings, pool_kernel=31),
    ]
    out = tmp_path / "needle.jsonl"
    variants = [settings, *others]
    for i, recorded in enumerate(variants):
        out.write_text(json.dumps(dict(case, **recorded)) + "\n")
        for j, asked in enumerate(variants):
            assert len(measured_rows(out, "M", S, asked)) == (i == j)
    out.write_text(json.dumps(case) + "\n")  # before settings were recorded
    assert len(measured_rows(out, "M", S, settings)) == 1
    assert all(not measured_rows(out, "M", S, other) for other in others)
    # the pool is the indexer's: a heuristic's row holds under any --pool-kernel, and records none
    heuristic = dict(case, config="snapkv", indexmem_sha256=None, **settings)
    out.write_text(json.dumps(heuristic) + "\n")
    assert len(measured_rows(out, "M", S, dict(settings, pool_kernel=31))) == 1
    assert config_settings("snapkv", dict(settings, pool_kernel=31))["pool_kernel"] is None
    assert config_settings("indexmem", dict(settings, pool_kernel=31))["pool_kernel"] == 31


def test_needle_retention_finds_the_number_and_what_each_layer_kept(tiny_llama):
    text = " ".join(WORDS[i % len(WORDS)] + ("." if i % 9 == 8 else "") for i in range(3000))
    case = samples(1, [0.2], seed=5)[0]
    for policy, expected in (("full", 1.0), ("streaming", 0.0)):
        eng = Engine.load(
            str(tiny_llama),
            n_ctx=1024,
            n_batch=128,
            policy=policy,
            **({"budget": 200} if policy != "full" else {}),
        )
        prompt = build_prompt(
            eng, eng.tokenize(text, add_special=False), 900, case["depth"], case["key"], case["value"]
        )
        span = value_span(eng, prompt, case["value"])

        def spelled(idx, eng=eng, prompt=prompt):
            return eng.detokenize([prompt[i] for i in idx]).replace("\u2581", " ")

        assert case["value"] in spelled(span)
        assert case["value"] not in spelled(span[1:]) and case["value"] not in spelled(span[:-1])
        # streaming at a budget of 200 keeps the sinks and the newest tokens, never a needle at 0.2
        after_prompt, after_answer, _ = needle_shares(
            eng, eng.tokenize(text, add_special=False), 900, case, 2
        )
        assert after_prompt.tolist() == after_answer.tolist() == [expected] * eng.hparams.n_layer
        assert cached_share(eng, span).tolist() == [expected] * eng.hparams.n_layer
        assert policy_layer_mask(eng).all()
    with pytest.raises(ValueError, match="not in the prompt"):
        value_span(eng, prompt, "no such number")


def test_needle_retention_tells_the_prompt_from_the_answer(tiny_llama):
    """A needle among the last tokens a streaming cache keeps is cached once the prompt is in,
    and gone after 60 answered tokens have pushed it out (compressing at every step)."""
    text = " ".join(WORDS[i % len(WORDS)] + ("." if i % 9 == 8 else "") for i in range(3000))
    case = samples(1, [0.96], seed=5)[0]
    eng = Engine.load(
        str(tiny_llama), n_ctx=1024, n_batch=128, policy="streaming", budget=240, window=8, tau=1
    )
    hay = eng.tokenize(text, add_special=False)
    after_prompt, after_answer, _ = needle_shares(eng, hay, 900, case, max_tokens=60)
    assert len(eng.feeder.history) > 900  # the tiny model did answer at length
    assert after_prompt.tolist() == [1.0] * eng.hparams.n_layer
    assert after_answer.tolist() == [0.0] * eng.hparams.n_layer


def test_perplexity_reruns_measure_only_what_is_missing_and_never_overwrite_other_settings(
    tmp_path, tiny_llama, monkeypatch
):
    from indexmem.cli.bench import app
    from typer.testing import CliRunner

    measured = []
    token_nll = Engine.token_nll
    monkeypatch.setattr(Engine, "token_nll", lambda self, doc: measured.append(1) or token_nll(self, doc))
    out = tmp_path / "ppl.json"
    base = [
        "ppl",
        "--model",
        str(tiny_llama),
        "--context",
        "96",
        "--windows",
        "1",
        "--n-batch",
        "16",
        "--window",
        "8",
        "--out",
        str(out),
    ]

    def run(*extra):
        measured.clear()
        result = CliRunner().invoke(app, base + list(extra))
        return result, len(measured)

    result, n = run("--policies", "streaming", "--ratios", "0.5")
    assert result.exit_code == 0, result.output
    assert n == 2  # full KV and streaming
    first = json.loads(out.read_text())
    assert first["windows"] == 1 and first["window"] == 8 and len(first["model_sha256"]) == 64

    result, n = run("--policies", "streaming,tova", "--ratios", "0.5")
    assert result.exit_code == 0, result.output
    assert n == 1  # only tova is new
    second = json.loads(out.read_text())
    assert second["results"][:2] == first["results"]
    assert [r["policy"] for r in second["results"]] == ["full", "streaming", "tova"]

    result, n = run("--policies", "tova", "--ratios", "0.5")
    assert result.exit_code == 0 and n == 0
    assert {r["policy"] for r in json.loads(out.read_text())["results"]} == {"full", "streaming", "tova"}

    before = out.read_text()
    result, n = run("--policies", "tova", "--ratios", "0.5", "--n-batch", "32")
    assert result.exit_code == 1 and "other settings" in result.output and n == 0
    assert out.read_text() == before

    legacy = json.loads(before)
    for key in ("model_sha256", "windows", "window"):
        del legacy[key]
    out.write_text(json.dumps(legacy))
    result, n = run("--policies", "tova", "--ratios", "0.5")
    assert result.exit_code == 0 and n == 2  # settings not recorded in full: measured again
    assert [r["ppl"] for r in json.loads(out.read_text())["results"]] == [
        r["ppl"] for r in json.loads(before)["results"] if r["policy"] != "streaming"
    ]

    out.write_text('{"results": [')
    result, n = run("--policies", "tova", "--ratios", "0.5")
    assert result.exit_code == 1 and "not a perplexity result file" in result.output and n == 0
    assert out.read_text() == '{"results": ['


def test_llama_cpp_settings_of_the_speed_benchmark():
    from indexmem.bench.speed import DEFAULT_LLAMA_CPP, LlamaSetting, parse_llama_settings
    from indexmem.bench.speed_results import is_llama_cpp, llama_cpp_setting

    settings = parse_llama_settings(DEFAULT_LLAMA_CPP)
    assert settings == [
        LlamaSetting(True, "f16", "f16"),
        LlamaSetting(False, "f16", "f16"),
        LlamaSetting(True, "q8_0", "q8_0"),
        LlamaSetting(False, "q8_0", "f16"),
    ]
    for s in settings:  # the rows the documentation generator reads (docs/benchmarks.md)
        row = {"engine": s.engine, "llama_cpp": s.as_dict()}
        assert is_llama_cpp(row) and s.engine == f"llama.cpp ({llama_cpp_setting(row, {})})"
    assert settings[3].engine == "llama.cpp (no flash attention, K q8_0 / V f16)"
    for bad, why in (
        ("nofa:q8_0:q8_0", "quantized V"),
        ("fa:f16", "fa:K:V"),
        ("on:f16:f16", "fa:K:V"),
        ("fa:q3_K:f16", "q3_k"),
        ("", "at least one"),
    ):
        with pytest.raises(Exception, match=why):
            parse_llama_settings(bad)


def test_cache_memory_reads_llama_cpps_kv_buffer_and_ours(tmp_path):
    """llama.cpp's KV buffer as its log reports it is n_layer x n_ctx rows of K and V in their
    types; ours is what stats() reports; the table puts each against llama.cpp's f16 cache."""
    from indexmem.bench.cache_memory import llama_cpp_kv_bytes, memory_table
    from indexmem.ggml_ops.bindings import C
    from indexmem.ggml_ops.structs import GGMLType
    from tiny_models import write_tiny_model

    path = write_tiny_model(tmp_path / "wide.gguf", "llama", seed=1, head_dim=32)  # 2 layers, 2 KV heads
    for name, t in (("f16", GGMLType.F16), ("q8_0", GGMLType.Q8_0)):
        assert llama_cpp_kv_bytes(path, 512, name, name) == 2 * 512 * 2 * C.ggml_row_size(t, 64)
    data = {
        "rows": [
            dict(
                engine="llama.cpp",
                cache="full",
                type_k="f16",
                type_v="f16",
                kv_bytes=4_000_000,
                index_bytes=0,
                memory_bytes=0,
            ),
            dict(
                engine="ours",
                cache="indexmem",
                budget=1024,
                type_k="q8_0",
                type_v="q8_0",
                kv_bytes=900_000,
                index_bytes=60_000,
                memory_bytes=40_000,
            ),
            dict(
                engine="ours",
                cache="full",
                budget=None,
                type_k="f16",
                type_v="f16",
                kv_bytes=3_000_000,
                index_bytes=0,
                memory_bytes=0,
            ),
        ]
    }
    lines = memory_table(data).splitlines()
    assert lines[2] == "| llama.cpp, full KV | f16 | 4.00 | 0.00 | 0.00 | 4.00 | 100.0% |"
    assert lines[3] == "| ours, indexmem B=1,024 | q8_0 | 0.90 | 0.06 | 0.04 | 1.00 | 25.0% |"
    assert lines[4] == "| ours, full KV | f16 | 3.00 | 0.00 | 0.00 | 3.00 | 75.0% |"


def test_kernel_ab_times_two_builds_of_the_kernel_sources(tmp_path):
    """bench/kernel_ab.py: the base revision's sources (the working tree's where a file is new)
    and the working tree's, both built and timed on the default model's decode shape."""
    from indexmem.bench import kernel_ab
    from indexmem.engine import attention
    from indexmem.ggml_ops.kernel import HEADERS, SOURCES
    from typer.testing import CliRunner

    own = attention.attention_kernel
    got = kernel_ab.sources_at("HEAD", tmp_path)
    assert sorted(p.name for p in got.iterdir()) == sorted(f.name for f in SOURCES + HEADERS)
    result = CliRunner().invoke(
        kernel_ab.app, ["--base", "HEAD", "--shapes", "1x256", "--types", "f16", "--rounds", "1"]
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| 1 x 256"))
    base_ms, ours_ms, ratio = (float(x) for x in row.strip("|").split("|")[2:])
    assert base_ms > 0 and ours_ms > 0
    # every figure is shown to 2 decimals: each may be off by 0.005
    assert abs(ratio * base_ms - ours_ms) <= 0.005 * (1 + ratio + base_ms) + 1e-9
    assert attention.attention_kernel is own  # the engine builds with its own kernel again

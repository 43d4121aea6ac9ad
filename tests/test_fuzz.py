"""The fuzz harness on tiny models: every kind of file, every case ends ok or in a clean error;
the harness itself catches crashes and hangs, mutates deterministically and restores what it
patches; and each bug the full fuzz run found stays fixed (checked in a child process, since a
regression would abort the process)."""

import json
import random

import pytest
from indexmem.ggml_ops.gguf_reader import GGUFFile
from indexmem.hardening import mutate_gguf
from indexmem.hardening.cases import GGUFTarget, SessionTarget, SidecarTarget
from indexmem.hardening.child import Worker
from indexmem.hardening.fuzz import run_fuzz
from indexmem.hardening.gguf_files import PatchedGGUF, RebuiltGGUF
from indexmem.hardening.mutate_session import SessionParts
from indexmem.hardening.report import BUGS
from test_indexmem import setup  # noqa: F401  (tiny f32 llama + random IndexMem sidecar)
from tiny_models import write_tiny_model

GGUF_TYPE_INT32, GGUF_TYPE_FLOAT32, GGUF_TYPE_STRING, GGUF_TYPE_ARRAY, GGML_TYPE_F16 = 5, 6, 8, 9, 1
SESSION = {
    "policy": "indexmem",
    "memory": True,
    "budget": 32,
    "window": 8,
    "tau": 4,
    "n_batch": 16,
    "n_ctx": 256,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    found = {
        arch: write_tiny_model(root / f"{arch}.gguf", arch, seed=4) for arch in ("llama", "qwen2", "gemma3")
    }
    found["llama32"] = write_tiny_model(root / "llama32.gguf", "llama", seed=4, head_dim=32)  # q8_0 fits
    return found


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "worker.log")
    yield w
    w.close()


def test_quick_fuzz_of_every_kind_ends_ok_or_in_clean_errors(models, setup, tmp_path):  # noqa: F811
    base, side, _ = setup
    targets = [
        GGUFTarget(models["llama"]),
        GGUFTarget(models["gemma3"]),
        SidecarTarget(base, side),
        SessionTarget(base, {"indexmem": str(side), **SESSION}, prompt=60),
        SessionTarget(base, {"policy": "snapkv", "budget": 32, "n_batch": 16, "n_ctx": 256}, prompt=60),
        SessionTarget(
            models["llama32"],
            {
                "policy": "snapkv",
                "budget": 32,
                "n_batch": 16,
                "n_ctx": 256,
                "cache_type_k": "q8_0",
                "cache_type_v": "q4_0",
            },
            prompt=60,
        ),
    ]
    report = run_fuzz(targets, cases=1500, seed=11, failures_dir=tmp_path / "failures", timeout=60)
    assert report["failures"] == [], json.dumps(report["failures"], indent=1)[:4000]
    assert all(report["totals"][o] == 0 for o in BUGS)
    for kind in ("gguf", "sidecar", "session"):
        counts = report["counts"][kind]
        assert sum(counts.values()) == 500
        assert counts["error"] >= 100, (kind, counts)  # the mutators really break files
        assert report["errors_not_naming_the_file"][kind] == []
    assert report["totals"]["ok"] >= 150  # and some mutated files still load and run
    assert report["worker_restarts"] == 0


def test_the_worker_reports_crashes_and_hangs_and_carries_on(worker):
    assert worker.run({"op": "crash"}, timeout=30) | {"stderr": ""} == {
        "outcome": "crash",
        "message": "killed by SIGSEGV",
        "stderr": "",
    }
    assert worker.run({"op": "hang"}, timeout=1)["outcome"] == "hang"
    assert worker.run({"op": "ping"}, timeout=30)["outcome"] == "ok"
    assert worker.restarts == 2


def test_mutations_are_deterministic_and_really_change_the_header(models, tmp_path):
    base = RebuiltGGUF(models["llama"], tmp_path).base
    first = [mutate_gguf.mutate(random.Random(f"7:{i}"), base) for i in range(40)]
    again = [mutate_gguf.mutate(random.Random(f"7:{i}"), base) for i in range(40)]
    assert [(m.header, m.what, m.truncate_at) for m in first] == [
        (m.header, m.what, m.truncate_at) for m in again
    ]
    changed = sum(m.header != base.header or m.truncate_at is not None for m in first)
    assert changed >= 36  # a few mutators can pick a value equal to the original


def test_the_patched_working_copy_is_restored_after_every_case(models, tmp_path):
    patched = PatchedGGUF(models["qwen2"], tmp_path)
    original = models["qwen2"].read_bytes()
    for i in range(30):
        mutation = mutate_gguf.mutate(random.Random(f"3:{i}"), patched.base)
        with patched.apply(mutation) as path:
            mutated = path.read_bytes()
            if mutation.truncate_at is None:
                assert len(mutated) == len(original)
                assert mutated[len(patched.prefix(mutation)) :] == original[len(patched.prefix(mutation)) :]
            else:
                assert len(mutated) == min(mutation.truncate_at, len(original))
        assert patched.path.read_bytes() == original


def _gguf_findings(models):
    """(model, mutation) of each GGUF input that crashed or raised a non-indexmem error before."""

    def base(arch):
        return RebuiltGGUF(models[arch], models[arch].parent).base

    llama, qwen2 = base("llama"), base("qwen2")
    last = qwen2.layout.tensors[-1].name  # a vector stored last: its size may change unnoticed
    with GGUFFile(models["llama"]) as g:
        tokens, scores = g.raw_strings("tokenizer.ggml.tokens"), g.get("tokenizer.ggml.scores").tolist()
    duplicated = tokens[:300] + [tokens[301]] + tokens[301:]
    return [
        (
            "llama",
            mutate_gguf.set_typed_value(
                llama, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY, (GGUF_TYPE_STRING, duplicated)
            ),
        ),  # llama.cpp vocab abort
        (
            "llama",
            mutate_gguf.set_typed_value(llama, "tokenizer.ggml.model", GGUF_TYPE_STRING, "none"),
        ),  # abort
        (
            "llama",
            mutate_gguf.set_typed_value(
                llama, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY, (GGUF_TYPE_FLOAT32, scores[:10])
            ),
        ),  # read past the end
        ("llama", mutate_gguf.set_value(llama, "llama.attention.layer_norm_rms_epsilon", -1.0)),  # abort
        ("qwen2", mutate_gguf.set_tensor_type(qwen2, last, GGML_TYPE_F16)),  # binary op abort
        ("llama", mutate_gguf.set_typed_value(llama, "tokenizer.chat_template", GGUF_TYPE_INT32, -1)),
        ("llama", mutate_gguf.set_typed_value(llama, "llama.block_count", GGUF_TYPE_STRING, "two")),
        ("llama", mutate_gguf.set_value(llama, "llama.block_count", 2**32 - 1)),
        ("llama", mutate_gguf.set_typed_value(llama, "llama.context_length", GGUF_TYPE_INT32, -5)),
        ("llama", mutate_gguf.set_value(llama, "llama.rope.dimension_count", 17)),  # rope aborts: odd
        ("llama", mutate_gguf.set_value(llama, "llama.rope.dimension_count", 18)),  # ... past head_dim 16
        ("llama", mutate_gguf.set_value(llama, "llama.rope.dimension_count", 0)),  # ... never returns
    ]


def test_gguf_findings_stay_fixed(models, worker):
    for arch, mutation in _gguf_findings(models):
        with RebuiltGGUF(models[arch], models[arch].parent).apply(mutation) as path:
            result = worker.run({"op": "gguf", "path": str(path)}, timeout=60)
        assert result["outcome"] == "error", (mutation.what, result)
        assert "ModelFormatError" in result["message"] and str(path) in result["message"]


def test_sidecar_findings_stay_fixed(setup, worker, tmp_path):  # noqa: F811
    base_model, side, _ = setup
    sidecar = RebuiltGGUF(side, tmp_path)
    b = sidecar.base
    cases = [
        mutate_gguf.set_typed_value(b, "indexmem.layers", 12, 0.5),  # float where a layer list belongs
        mutate_gguf.set_typed_value(b, "indexmem.sinks", GGUF_TYPE_STRING, ""),
        mutate_gguf.set_typed_value(b, "indexmem.memory.length", 9, (4, [1, 2, 3])),
        mutate_gguf.set_value(b, "indexmem.default_budget", 2),  # below sinks: ValueError before
        mutate_gguf.set_value(b, "indexmem.norm_eps", -1.0),  # rms_norm abort
        mutate_gguf.set_typed_value(b, "indexmem.format_version", 9, (4, [1, 2, 3])),  # ambiguous truth
        mutate_gguf.without_key(b, "indexmem.default_budget"),  # "policy needs a budget" ValueError
    ]
    for mutation in cases:
        with sidecar.apply(mutation) as path:
            result = worker.run(
                {"op": "sidecar", "path": str(path), "model": str(base_model), "options": {}, "prompt": 40},
                timeout=60,
            )
        assert result["outcome"] == "error", (mutation.what, result)
        assert str(path) in result["message"]


def test_session_findings_stay_fixed(setup, worker, tmp_path):  # noqa: F811
    base, side, _ = setup
    config = {"model": str(base), "options": {"indexmem": str(side), **SESSION}}
    good = tmp_path / "good.session"
    made = worker.run({"op": "make_session", "config": config, "prompt": 60, "path": str(good)}, timeout=60)
    assert made["outcome"] == "ok"
    raw = good.read_bytes()

    def edited(change):
        parts = SessionParts.parse(raw)
        text = change(parts)
        return parts.build(header_text=text)

    def set_key(key, value):
        return lambda p: p.header.__setitem__(key, value)

    cases = {
        "deep nesting": edited(lambda p: b"[" * 60000),  # RecursionError before
        "blob entry None": edited(lambda p: p.header["blobs"].__setitem__(3, None)),
        "blob entry triple": edited(lambda p: p.header["blobs"].__setitem__(0, ["positions", 4, 0])),
        "n_used missing": edited(lambda p: p.header.pop("n_used") and None),
        "memory_used an int": edited(set_key("memory_used", 7)),
        "memory_used in a layer without memory": edited(set_key("memory_used", [0, 99])),
        "tokens_evicted a bool": edited(set_key("tokens_evicted", True)),
        "history_len 2**64": edited(set_key("history_len", 2**64)),
        "another cache type": edited(set_key("cache_types", {"k": "q8_0", "v": "q8_0"})),
        "cache types unreadable": edited(set_key("cache_types", [{"k": None}])),
    }
    for name, data in cases.items():
        path = tmp_path / "case.session"
        path.write_bytes(data)
        result = worker.run(
            {"op": "session", "path": str(path), "config": config, "history": made["history"]}, timeout=60
        )
        assert result["outcome"] == "error", (name, result)
        assert "SessionError" in result["message"] and str(path) in result["message"]
    path.write_bytes(raw)  # and the untouched file still loads and continues
    request = {"op": "session", "path": str(path), "config": config, "history": made["history"]}
    assert worker.run(request, timeout=60)["outcome"] == "ok"
    path.write_bytes(edited(lambda p: p.header.pop("cache_types") and None))  # saved before types were named
    assert worker.run(request, timeout=60)["outcome"] == "ok"

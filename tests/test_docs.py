"""The documentation is what the committed results give: every generated block, plot and RULER
report of README.md and docs/ equals what `python -m indexmem.bench.docs` writes from the result
files, and changing one committed result makes that check fail. Prose written by hand states no
figure (the generator writes those)."""

import json
import re
import shutil
from pathlib import Path

import pytest
from indexmem.bench.docs.blocks import begin, block, fill, insert_under, names
from indexmem.bench.docs.catalog import RESULTS
from indexmem.bench.docs.generate import differences, generate
from indexmem.bench.speed_results import ratio, read_speed, speed_table
from indexmem.engine.registry import MODELS

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_documents_and_plots_are_what_the_committed_results_give():
    stale = differences(ROOT, generate(ROOT))
    assert not stale, f"stale: {stale}; run `python -m indexmem.bench.docs` and commit what it writes"


def _checkout_copy(tmp_path: Path) -> Path:
    """What the generator reads: the documents, the result files, the checkpoints' JSON."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    for path in (ROOT / "checkpoints").glob("**/*.json"):
        (copy / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy / path.relative_to(ROOT))
    return copy


def _flip_a_tabled_ruler_score(path: Path) -> None:
    """IndexMem's first row at 0.9 in the file, a complete sample's: its score 0 <-> 1."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        row = json.loads(line)
        if row["config"] == "indexmem-nomem" and row["evict_ratio"] == 0.9 and row["index"] == 0:
            if (row.get("indexmem_sha256") or "").startswith("17c7a63a") and row["task"] == "niah_single_1":
                lines[i] = json.dumps(dict(row, score=1.0 - row["score"]))
                break
    else:
        raise AssertionError("no such row")
    path.write_text("\n".join(lines) + "\n")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _slower_llama_cpp(data):
    """llama.cpp decodes at half its rate in every setting at the longest context."""
    longest = max(r["context"] for r in data["rows"])
    for r in data["rows"]:
        if r["engine"].startswith("llama.cpp") and r["context"] == longest:
            r["decode"] *= 0.5


def _worse_perplexity(data):
    data["results"][-1]["ppl"] += 1.0


def _better_fact_recall(data):
    data["fact_recall"]["indexmem"]["0.9"] += 0.1


@pytest.mark.parametrize(
    "file, change, stale",
    [
        (
            "docs/results/ruler-smollm2-4k.jsonl",
            _flip_a_tabled_ruler_score,
            {"README.md", "docs/results.md", "docs/results/ruler-smollm2-4k.md"},
        ),
        (
            "docs/results/speed-smollm2-8k.json",
            lambda p: _edit_json(p, _slower_llama_cpp),
            {"README.md", "docs/results.md"},
        ),
        ("docs/results/ppl-gemma-8k.json", lambda p: _edit_json(p, _worse_perplexity), {"docs/results.md"}),
        (
            "checkpoints/gemma3-270m/eval_heldout_facts.json",
            lambda p: _edit_json(p, _better_fact_recall),
            {"docs/training.md"},
        ),
    ],
    ids=["ruler-row", "speed", "ppl", "train-eval"],
)
def test_changing_one_committed_result_makes_the_check_fail(tmp_path, file, change, stale):
    copy = _checkout_copy(tmp_path)
    change(copy / file)
    assert set(differences(copy, generate(copy, plots=False))) == stale


def _synthetic_ruler_rows(model: str) -> list[dict]:
    rows = []
    for config, ratio_, kv in (
        ("full", 0.0, 4_000_000),
        ("streaming", 0.75, 1_000_000),
        ("tova", 0.9, 400_000),
    ):
        for task, score in (("niah_single_1", 1.0), ("vt", 0.4)):
            rows.append(
                dict(
                    model=model,
                    model_sha256=MODELS[model].sha256,
                    indexmem_sha256=None,
                    config=config,
                    evict_ratio=ratio_,
                    budget=None if config == "full" else 512,
                    context=4096,
                    task=task,
                    index=0,
                    seed=0,
                    depth=None,
                    n_batch=512,
                    window=None if config == "full" else 64,
                    prompt_tokens=4090,
                    needle_depths=[0.5] if task.startswith("niah") else [],
                    score=score * (1 - ratio_),
                    kv_bytes=kv,
                    index_bytes=0,
                    memory_bytes=0,
                    seconds=1.0,
                )
            )
    return rows


def test_a_listed_result_file_adds_its_section_and_its_models_headline_once_it_exists(tmp_path):
    copy = _checkout_copy(tmp_path)
    model = "qwen2.5-coder-0.5b-instruct"
    entry = next(r for r in RESULTS if r.model == model and r.bench == "ruler")
    (copy / entry.file).write_text("".join(json.dumps(r) + "\n" for r in _synthetic_ruler_rows(model)))
    generated = generate(copy, plots=False)
    assert entry not in generated.skipped
    readme = generated.files["README.md"].decode()
    # the decode column: each engine's rate over llama.cpp's fastest in the model's speed file
    speed = json.loads(
        (copy / next(r for r in RESULTS if r.model == model and r.bench == "speed").file).read_text()
    )
    context = max(r["context"] for r in speed["rows"])
    rows = [r for r in speed["rows"] if r["context"] == context]
    fastest = max(r["decode"] for r in rows if r["engine"].startswith("llama.cpp"))
    decode = {r["engine"]: f"{r['decode'] / fastest:.2f}x" for r in rows}
    assert (
        f"**{model}**: RULER at 4,096 tokens (2 tasks, 1 sample per task); decode at {context:,} tokens "
        f"with B={speed['budget']:,}" in readme
    )
    # (1.0 + 0.4) / 2, one sample: no error
    assert f"| full KV | 70.0 | 70.0 | 4.0 | 4.0 | {decode['full']} |" in readme
    assert (
        f"| best heuristic | 17.5 (25%, streaming) | 7.0 (10%, tova) | 1.0 | 0.4 | {decode['tova']} |"
        in readme
    )
    # no sidecar yet
    assert f"| **IndexMem** (`indexmem-nomem`) | – | – | – | – | {decode['indexmem-nomem']} |" in readme
    results = generated.files["docs/results.md"].decode()
    assert begin(entry.block) in results[results.index(f"\n## {model}\n") :]  # its block, in a new section
    assert entry.file.replace(".jsonl", ".md") in generated.files  # and the report beside its rows


def test_generated_blocks_are_filled_and_inserted_where_they_belong():
    text = "# T\n\n## a\n\nprose\n\n" + block("x", "old") + "\n\n## b\n\n```\n## not a heading\n```\n"
    assert names(text) == ["x"]
    assert fill(text, {"x": "new"}) == text.replace("old", "new")
    with pytest.raises(ValueError, match="without a result"):
        fill(text, {})
    with pytest.raises(ValueError, match="no partner"):
        names(text.replace("<!-- end generated: x -->", ""))
    inserted = insert_under(text, "a", "y", "body")
    assert names(inserted) == ["x", "y"] and inserted.index("body") < inserted.index("## b")
    appended = insert_under(text, "not a heading", "z", "body")  # only real headings count
    assert appended.endswith("## not a heading\n\n" + block("z", "body") + "\n")


def _speed_file(tmp_path: Path, rows: list[dict], **settings) -> dict:
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(dict(threads=1, budget=1024, rows=rows, **settings)))
    return read_speed(path)


def test_speed_ratios_are_against_llama_cpps_fastest_setting_and_name_it(tmp_path):
    fa = {"flash_attn": True, "type_k": "f16", "type_v": "f16"}
    no_fa = {"flash_attn": False, "type_k": "f16", "type_v": "f16"}
    q8 = {"flash_attn": True, "type_k": "q8_0", "type_v": "q8_0"}
    rows = [
        dict(context=8000, engine="llama.cpp", llama_cpp=fa, prefill=80.0, decode=4.0),
        dict(
            context=8000, engine="llama.cpp (no flash attention)", llama_cpp=no_fa, prefill=60.0, decode=16.0
        ),
        dict(context=8000, engine="llama.cpp (q8_0)", llama_cpp=q8, prefill=30.0, decode=11.0),
        dict(context=8000, engine="indexmem", prefill=120.0, decode=40.0),
    ]
    data = _speed_file(tmp_path, rows)
    decode, prefill = ratio(data, "indexmem", 8000, "decode"), ratio(data, "indexmem", 8000, "prefill")
    assert (decode.value, decode.against, decode.settings) == (2.5, "no flash attention, f16 K/V", 3)
    assert (prefill.value, prefill.against) == (1.5, "flash attention, f16 K/V")  # the fastest may differ
    lines = speed_table(data).splitlines()
    assert "| 8,000 | ours, indexmem B=1024 | 120.0 | 1.50x | 40.0 | 2.50x |" in lines
    assert "| 8,000 | llama.cpp (flash attention, q8_0 K/V, full KV) | 30.0 | 0.38x | 11.0 | 0.69x |" in lines
    # a file that does not say how llama.cpp ran was measured the way bench/speed.py ran it then
    legacy = _speed_file(
        tmp_path,
        [dict(context=128, prefill_ours=2.0, prefill_llama_cpp=1.0, decode_ours=1.0, decode_llama_cpp=2.0)],
    )
    assert ratio(legacy, "full", 128, "decode").against == "flash attention, f16 K/V"
    assert ratio(legacy, "full", 128, "decode").value == 0.5


def test_a_speed_caption_names_the_sidecar_the_run_was_given(tmp_path):
    from indexmem.bench.speed_results import speed_caption

    row = dict(context=128, engine="indexmem", prefill=1.0, decode=1.0)
    assert "IndexMem file" not in speed_caption(_speed_file(tmp_path, [row]))
    caption = speed_caption(_speed_file(tmp_path, [row], indexmem="ab12cd34" + "0" * 56))
    assert "IndexMem file sha256 ab12cd34…" in caption


# Numbers hand-written prose may give: the eviction ratios and other settings, versions, a paper's id.
SPECS = {"0.5", "0.75", "0.9", "0.35", "0.65", "0.2", "0.8", "3.11", "2605.25475", "2%"}
FIGURE = re.compile(r"(?<![\w.=/-])(\d+(?:\.\d+)?[%x]|\d+\.\d+|\d{1,3}(?:,\d{3})+)(?![\w.]*\d)")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The hand-written part: without generated blocks, code blocks, inline code and links."""
    text = re.sub(r"^<!-- generated: (\S+) .*?^<!-- end generated: \1 -->$", "", text, flags=re.S | re.M)
    text = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_hand_written_prose_gives_no_figures(doc):
    figures = [f for f in FIGURE.findall(_prose(doc.read_text())) if f not in SPECS]
    assert not figures, f"{doc.name}: figures outside generated blocks: {figures}"


def test_the_figure_check_finds_a_typed_figure():
    assert FIGURE.findall(
        _prose("IndexMem keeps 67% of full KV (22.3 against 33.1) at 5.65x and 4,940 rows.")
    ) == [
        "67%",
        "22.3",
        "33.1",
        "5.65x",
        "4,940",
    ]
    assert not FIGURE.findall(
        _prose("At `--ratio 0.9`, see [x](docs/results/a-1.5.png) and\n" + block("b", "67%"))
    )


def test_two_indexmem_files_are_compared_on_the_examples_both_measured(tmp_path):
    from indexmem.bench.docs.catalog import Result
    from indexmem.bench.docs.sections import ruler_files

    model = "smollm2-135m-instruct"
    new, old = "ab" * 32, "cd" * 32
    base = _synthetic_ruler_rows(model)[0]  # a full-KV row to vary

    def row(config, sha, index, score, ratio_=0.9):
        return dict(base, config=config, indexmem_sha256=sha, evict_ratio=ratio_, index=index, score=score)

    rows = [row("full", None, i, 1.0, 0.0) for i in range(4)]
    # old: 1, 0, 1, 0 on examples 0-3; new: 1, 1, 0 on 0-2 and one example the old file never measured
    rows += [row("indexmem-nomem", old, i, s) for i, s in enumerate((1.0, 0.0, 1.0, 0.0))]
    rows += [row("indexmem-nomem", new, i, s) for i, s in enumerate((1.0, 1.0, 0.0))]
    rows += [row("indexmem-nomem", new, 9, 1.0)]
    rows += [row("indexmem-nomem", new, 5, 1.0), row("indexmem-nomem", old, 5, 0.0)]  # no full KV row
    rows += [row("indexmem-nomem", new, 0, 0.0, 0.75)]  # a level the old file has not run
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = Result(model, "ruler-files", "r.jsonl", modules="abab", against="cdcd")
    text = ruler_files(entry, tmp_path).text
    # examples 0-2: full 100, old (1 + 0 + 1) / 3, new (1 + 1 + 0) / 3; new wins example 1, loses 2
    assert "| indexmem-nomem @ 0.9, 4,096 tokens | 3 | 100.0 | 66.7 | 66.7 | 1–1 |" in text
    assert "@ 0.75" not in text and "abababab… against cdcdcdcd…" in text
    with pytest.raises(ValueError, match="0 IndexMem files start with ffff"):
        ruler_files(Result(model, "ruler-files", "r.jsonl", modules="abab", against="ffff"), tmp_path)

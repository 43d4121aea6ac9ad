"""What each kind of result file becomes in the documentation: a markdown block (a caption with the
file's own counts and settings, then its tables, reusing each benchmark's table code) and the files
drawn from the same rows (plots, RULER's report beside its rows)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...atomic import write_atomic
from ...engine.indexmem import SIDECAR_DIR
from ...engine.registry import MODELS
from ...hardening.report import markdown_summary
from ...hardening.soak import plot_rss
from ...markdown import table
from ...train.retrieval import LOOKALIKE_SHAPES
from ..cache_memory import memory_table
from ..needle import LEGACY_SETTINGS, measured_rows, plot_accuracy, summarize
from ..report import needle_table, ppl_table
from ..ruler.paired import examples_by_config
from ..ruler.plots import compression_curves, depth_heatmaps
from ..ruler.summary import (
    cache_types_of,
    complete_samples,
    config_label,
    first_samples,
    measured_with,
    read_rows,
)
from ..ruler.table import depth_table, megabytes, niah_report, ruler_report, ruler_table
from ..specs import ModulesFile, modules_file, uses_modules
from ..speed_results import read_speed, speed_caption, speed_table
from .catalog import Result

Writer = Callable[[Path], None]  # writes one output file at the path it is given


@dataclass
class Section:
    text: str
    outputs: dict[str, Writer] = field(default_factory=dict)  # repository path -> its writer
    rows: list[dict] = field(default_factory=list)  # the result rows shown (RULER: for the headline)


def link(target: str, doc: str) -> str:
    """``target`` (from the repository root) as a relative link from ``doc``."""
    return os.path.relpath(target, os.path.dirname(doc) or ".")


def _text_writer(text: str) -> Writer:
    return lambda path: write_atomic(path, text.encode())


def _one_sha256(entry: Result, rows: list[dict], prefix: str) -> str:
    found = {r["indexmem_sha256"] for r in rows if (r.get("indexmem_sha256") or "").startswith(prefix)}
    if len(found) != 1:
        raise ValueError(f"{entry.file}: {len(found)} IndexMem files start with {prefix}")
    return found.pop()


def modules_sha256(entry: Result, rows: list[dict]) -> ModulesFile | None:
    """The IndexMem file whose rows to show: the one the entry names by a sha256 prefix, else the
    sidecar shipped for the model (None: it has none, so only configurations without modules)."""
    if entry.modules:
        sha = _one_sha256(entry, rows, entry.modules)
        return ModulesFile(sha, _one_sha256(entry, rows, entry.indexer_from) if entry.indexer_from else sha)
    sidecar = MODELS[entry.model].sidecar
    return modules_file(SIDECAR_DIR / sidecar) if sidecar else None


def ruler_rows(entry: Result, root: Path) -> list[dict]:
    """The rows a RULER table shows: this model's, with the chosen IndexMem file, complete samples only."""
    rows = read_rows(root / entry.file)
    rows = measured_with(rows, MODELS[entry.model].sha256, modules_sha256(entry, rows))
    return first_samples(rows, complete_samples(rows))


def _modules_note(rows: list[dict]) -> str:
    shas = sorted({r["indexmem_sha256"][:8] for r in rows if r.get("indexmem_sha256")})
    note = f"; IndexMem file sha256 {', '.join(s + '…' for s in shas)}" if shas else ""
    types = sorted({cache_types_of(r) for r in rows} - {("f16", "f16")})
    return note + (f"; K/V cache {', '.join(f'{k} / {v}' for k, v in types)}" if types else "")


def ruler(entry: Result, root: Path) -> Section | None:
    rows = ruler_rows(entry, root)
    if not rows:
        return None
    contexts = sorted({r["context"] for r in rows})
    samples = len({r["index"] for r in rows})
    caption = (
        f"**RULER, {entry.model}, {' and '.join(f'{c:,}' for c in contexts)} tokens**: "
        f"{len({r['task'] for r in rows})} tasks, {samples} sample{'s' * (samples != 1)} per task "
        f"({len(rows):,} examples){_modules_note(rows)}."
    )
    outputs, parts = {}, [caption, ruler_table(rows)]
    if entry.plot:
        outputs[entry.plot] = lambda path: compression_curves(rows, path, f"RULER, {entry.model}")
        parts.append(f"![RULER compression curves, {entry.model}]({link(entry.plot, entry.doc)})")
    if entry.modules is None:  # the report `indexmem-bench ruler` keeps beside the rows
        report = str(Path(entry.file).with_suffix(".md"))
        outputs[report] = _text_writer(ruler_report(rows, entry.model))
        parts.append(f"What each sample cost to measure: [{Path(report).name}]({link(report, entry.doc)}).")
    return Section("\n\n".join(parts), outputs, rows)


def ruler_files(entry: Result, root: Path) -> Section | None:
    """Two IndexMem files, ``entry.modules`` against ``entry.against``, in each configuration both
    ran, on the very examples both measured (partial samples included: the pairing is per
    example), with full KV's mean on those examples."""
    rows = read_rows(root / entry.file)
    model = MODELS[entry.model].sha256
    new, old = (_one_sha256(entry, rows, prefix) for prefix in (entry.modules, entry.against))
    new_rows, old_rows = (measured_with(rows, model, ModulesFile(sha, sha)) for sha in (new, old))
    full_rows = measured_with(rows, model, None)
    lines = []
    for context in sorted({r["context"] for r in rows}):
        full = examples_by_config(full_rows, context).get(("full", 0.0, None), {})
        by_new, by_old = examples_by_config(new_rows, context), examples_by_config(old_rows, context)
        for config in sorted(by_new.keys() & by_old.keys()):
            a, b = by_new[config], by_old[config]
            shared = sorted(a.keys() & b.keys() & full.keys())
            if not uses_modules(config[0]) or not shared:
                continue
            mean = [f"{100 * sum(scores[k] for k in shared) / len(shared):.1f}" for scores in (full, b, a)]
            wins, losses = sum(a[k] > b[k] for k in shared), sum(a[k] < b[k] for k in shared)
            label = f"{config_label(config)}, {context:,} tokens"
            lines.append([label, f"{len(shared):,}", *mean, f"{wins}–{losses}"])
    if not lines:
        return None
    caption = (
        f"**Two IndexMem files on the same RULER examples, {entry.model}**: {new[:8]}… against "
        f"{old[:8]}…, each configuration on every example both measured with it (and full KV "
        "measured too); score x100, the mean over those examples; wins–losses are the first file's."
    )
    headers = ["configuration", "examples", "full KV", f"{old[:8]}…", f"{new[:8]}…", "wins–losses"]
    return Section(f"{caption}\n\n{table(headers, lines)}")


def niah(entry: Result, root: Path) -> Section | None:
    rows = [r for r in ruler_rows(entry, root) if r["depth"] is not None]
    if not rows:
        return None
    (task,) = {r["task"] for r in rows}
    caption = f"**{task} by needle depth and prompt length, {entry.model}**: accuracy{_modules_note(rows)}."
    outputs = {str(Path(entry.file).with_suffix(".md")): _text_writer(niah_report(rows, task, entry.model))}
    parts = [caption, depth_table(rows).rstrip()]
    if entry.plot:
        title = f"{task}, {entry.model}: accuracy by needle depth and context length"
        outputs[entry.plot] = lambda path: depth_heatmaps(rows, path, title)
        parts.append(f"![needle depth x length, {entry.model}]({link(entry.plot, entry.doc)})")
    return Section("\n\n".join(parts), outputs, rows)


def needle(entry: Result, root: Path) -> Section | None:
    settings = dict(LEGACY_SETTINGS, target_context=entry.context)  # the needle command's defaults
    path = root / entry.file
    modules = modules_sha256(entry, read_rows(path))
    rows = list(measured_rows(path, MODELS[entry.model].sha256, modules, settings).values())
    if not rows:
        return None
    caption = (
        f"**Needle in a haystack, {entry.model}, {entry.context:,}-token prompts**: share of the needles "
        f"found (n = needles per configuration and ratio){_modules_note(rows)}."
    )
    outputs, parts = {}, [caption, needle_table(rows)]
    if entry.plot:
        title = f"{entry.model}: needle retrieval at {entry.context} tokens"
        outputs[entry.plot] = lambda path: plot_accuracy(summarize(rows), path, title)
        parts.append(f"![needle, {entry.model}]({link(entry.plot, entry.doc)})")
    return Section("\n\n".join(parts), outputs, rows)


def ppl(entry: Result, root: Path) -> Section:
    data = json.loads((root / entry.file).read_text())
    full = next(r for r in data["results"] if r["policy"] == "full")
    windows, rest = divmod(
        full["tokens"], data["context"] - 1
    )  # each window predicts all but its first token
    text = f"{windows} × {data['context']:,}" if windows and not rest else f"{full['tokens']:,}"
    budgets = sorted({(r["evict_ratio"], r["kv_bytes"]) for r in data["results"] if r["policy"] != "full"})
    caption = (
        f"**Perplexity, {entry.model}**: {text} tokens of held-out text, prefilled in chunks of "
        f"{data['n_batch']} with every layer compressed to its budget B between chunks. KV MB allocated: "
        f"full KV {megabytes(full['kv_bytes'])}, "
        + ", ".join(f"evict {ratio:g} {megabytes(kv)}" for ratio, kv in budgets)
        + "."
    )
    shas = sorted({r["indexmem_sha256"][:8] for r in data["results"] if r.get("indexmem_sha256")})
    if shas:
        caption += f" IndexMem file sha256 {', '.join(sha + '…' for sha in shas)}."
    return Section(f"{caption}\n\n{ppl_table(data)}")


def cache_memory(entry: Result, root: Path) -> Section:
    data = json.loads((root / entry.file).read_text())
    ours_full = any(r["engine"] == "ours" and r.get("budget") is None for r in data["rows"])
    caption = (
        f"**Cache memory at {data['context']:,} tokens, {entry.model}**: bytes allocated for the K/V cache, "
        f"IndexMem's index keys and its latent memory, llama.cpp keeping every token, ours "
        f"{'keeping every token (full KV) or ' if ours_full else ''}at a budget of "
        f"{data['budget']:,} per layer"
        + (f", IndexMem file sha256 {data['indexmem'][:8]}…" if data.get("indexmem") else "")
        + " (`bench/cache_memory.py`)."
    )
    return Section(f"{caption}\n\n{memory_table(data)}")


def speed(entry: Result, root: Path) -> Section:
    data = read_speed(root / entry.file)
    return Section(f"**Speed, {entry.model}**: {speed_caption(data)}\n\n{speed_table(data)}")


EVAL_TABLES = {  # key in the evaluation file -> what it measures
    "fact_recall": "share of the facts' tokens kept when the text before the questions is compressed once "
    "by the queries just before them",
    "fact_recall_chunked": "share of the facts' tokens still cached after a simulated chunked prefill, "
    "compressed after every chunk",
    "recall": "share of the teacher's max-pooled attention (over all queries) kept when the sequence is "
    "compressed once (METHOD.md's measure)",
}


def train_eval(entry: Result, root: Path) -> Section:
    data = json.loads((root / entry.file).read_text())
    caption = (
        f"**{entry.model}, `{Path(entry.file).name}`**: {data['sequences']} held-out sequences, "
        f"{len(data['layers'])} layers."
    )
    parts = [caption]
    for key, what in EVAL_TABLES.items():
        if key in data:
            ratios = sorted({r for by_ratio in data[key].values() for r in by_ratio}, key=float)
            rows = [[name, *(f"{by_ratio[r]:.3f}" for r in ratios)] for name, by_ratio in data[key].items()]
            parts += [
                f"{what[0].upper() + what[1:]}:",
                table(["scores", *(f"evict {r}" for r in ratios)], rows),
            ]
    parts.append(
        f"Latent memory at evict {data['residual_at_evict_ratio']:g}: attention-output residual "
        f"‖o_full − o_attn(kept)‖² {data['residual_without_memory']:.2f} → {data['residual_with_memory']:.2f} "
        f"with the memory's readout added ({100 * data['residual_reduction']:.1f}% less)."
    )
    return Section("\n\n".join(parts))


def _data_source(source: str) -> str:
    """A training config's data as the reader needs it: without the feature folder's path."""
    m = re.fullmatch(r"\S+ \((.*?)\), (.*)", source)
    return f"{m[2]}, from the {m[1]}" if m else source


def train_config(entry: Result, root: Path) -> Section:
    c = json.loads((root / entry.file).read_text())
    fit, sizes = c["fit"], c["sizes"]
    always = (
        f" plus layers {', '.join(map(str, fit['always_layers']))} at every step"
        if fit["always_layers"]
        else ""
    )
    objective = (
        f"the indexer's importance from one window of {fit['student_window']} queries, the teacher's from "
        f"queries at least {fit['teacher_min_distance']} tokens later"
        if fit["student_window"]
        else "METHOD.md's objective"
    )
    text = (
        f"**{entry.model}, `{Path(entry.file).name}`**: {c['steps']:,} steps ({fit['stage1_steps']} indexer only, "
        f"{fit['stage2_steps']} joint), {fit['layers_per_step']} random layers per step{always}; "
        f"{objective}. Indexer: {sizes['n_idx_heads']} heads of {sizes['d_idx']}; latent memory of "
        f"{sizes['d_mem']}. Data: {_data_source(c['data']['source'])}. Trained in "
        f"{c['train_seconds_this_run'] / 60:.1f} min (the run's own count, one thread of this machine); final "
        f"losses: index {c['final_index_loss']:.3f}, memory {c['final_mem_loss']:.2f}."
    )
    return Section(text)


def fuzz(entry: Result, root: Path) -> Section:
    report = json.loads((root / entry.file).read_text())
    caption = (
        f"**{report['cases']:,} cases, seed {report['seed']}** ({report['wall_seconds'] / 60:.1f} min, "
        f"{report['worker_restarts']} worker restarts): `{report['command']}`"
    )
    return Section(f"{caption}\n\n{markdown_summary(report)}")


def soak(entry: Result, root: Path) -> Section:
    s = json.loads((root / entry.file).read_text())
    mib = 2**20
    text = (
        f"**{s['tokens']:,} tokens in {s['turns']} turns** through {s['model']}, {s['policy']} with a "
        f"budget of {s['budget']:,} ({s['seconds'] / 60:.0f} min; {s['position_shift']:,} positions shifted "
        f"back by the end; KV cache {megabytes(s['kv_bytes'])} MB). After the warm-up the resident set "
        f"stayed within **{100 * s['flatness']:.2f}%** of its median "
        f"({s['rss_after_warmup_min'] / mib:.1f}–{s['rss_after_warmup_max'] / mib:.1f} MiB; "
        f"the tolerance is {100 * s['tolerance']:.0f}%)."
    )
    outputs, parts = {}, [text]
    if entry.plot:
        outputs[entry.plot] = lambda path: plot_rss(s, path)
        parts.append(f"![RSS over the conversation]({link(entry.plot, entry.doc)})")
    return Section("\n\n".join(parts), outputs)


def recall_rss(entry: Result, root: Path) -> Section:
    d = json.loads((root / entry.file).read_text())
    mib = 2**20
    rows = [
        [
            f"{r['prompt_tokens']:,}",
            f"{r['peak_rss_bytes'] / mib:.1f}",
            f"{r['ram_bytes'] / mib:.1f}",
            f"{r['recall_store_bytes'] / mib:.1f}",
            f"{r['recall_store_tokens']:,}",
            f"{r['tokens_recalled']:,}",
        ]
        for r in d["rows"]
    ]
    caption = (
        f"**The recall tier's store on disk, {entry.model}**: B = {d['budget']:,}, {d['threads']} thread, "
        f"each prompt in a fresh process; the peak resident set grows {100 * d['growth']:.1f}% from the "
        f"shortest prompt to the longest (the goal: within 5%)."
    )
    headers = [
        "prompt tokens",
        "peak RSS MiB",
        "cache in RAM MiB",
        "store on disk MiB",
        "tokens stored",
        "recalled",
    ]
    return Section(f"{caption}\n\n{table(headers, rows)}")


def memory_fit(entry: Result, root: Path) -> Section:
    """The end-to-end memory fit's held-out KL (``memory_fit_report.json`` beside its config)."""
    report = json.loads((root / entry.file).read_text())
    config = json.loads((root / entry.file).with_name("config.json").read_text())
    fit = config["memory_fit"]
    ratios = [k for k, v in report["without_memory"].items() if not isinstance(v, dict)]
    names = {"without_memory": "no memory", "before": "starting memory", "after": "trained memory"}
    cols = [key for key in names if key in report]
    rows = [[f"evict {r}", *(f"{report[key][r]:.4f}" for key in cols)] for r in ratios]
    if "top1" in report["without_memory"]:  # fits before it was measured have KL only
        rows += [
            [f"top-1 agreement @ {r}", *(f"{report[key]['top1'][r]:.3f}" for key in cols)] for r in ratios
        ]
    shut = config["n_layer"] - len(config["memory_layers"])
    text = (
        f"**{entry.model}, end-to-end memory fit**: {config['steps']} steps of one "
        f"{config['data']['seq_len']:,}-token window each ({config['data']['windows']} training windows, three in "
        f"five retrieval-shaped{_lookalike_said(config)}), eviction ratios {', '.join(map(str, fit['ratios']))}, learning rate "
        f"{fit['lr']:g}, gate penalty {fit['gate_penalty']:g}{_memory_start(config)}. Held out "
        f"({config['data']['heldout']} windows): "
        f"mean KL of the bounded model's next-token distributions to the full-KV model's on the targets "
        f"(nats){_top1_said(report)}. {len(config['memory_layers'])} memory layers stay open, {shut} were shut."
    )
    headers = ["", *(names[key] for key in cols)]
    return Section(f"{text}\n\n{table(headers, rows)}")


def _lookalike_said(config: dict) -> str:
    share = config["memory_fit"].get("lookalike", 0)
    if not share:
        return ""
    crowd = [distractors for _, distractors in LOOKALIKE_SHAPES]
    return f", {share:.0%} of those hiding the asked facts among {min(crowd)}-{max(crowd)} same-worded ones"


def _top1_said(report: dict) -> str:
    if "top1" not in report["without_memory"]:
        return ""
    return ", and the share of the targets whose most likely next token is the full-KV model's"


def _memory_start(config: dict) -> str:
    """How the fit's memory joined attention and how its gates started, when not the defaults."""
    combine = config["sizes"].get("mem_combine", "add")
    bias = config["memory_fit"].get("start_gate_bias")
    rules = {
        "mix": ", readout mixed in: o + g·(m − o)",
        "share": ", readout mixed in: o + g·(m − o) with g = sigmoid(w·q + c + log den(q) − lse_kept(q))",
    }
    parts = [rules.get(combine, "")]
    if bias is not None:
        parts.append(
            f", gates started at w = 0 and per-layer biases making the mean gate sigmoid({bias:g}) on a training window"
            if combine == "share"
            else f", gates started at bias {bias:g}"
        )
    started = config.get("started_from", {}).get("sha256", "")
    if started and started != config.get("indexer_from"):
        parts.append(f", memory started from the fit in sidecar {started[:8]}")
    harm = config["memory_fit"].get("harm_weight", 0)
    if harm:
        parts.append(
            f", harm weight {harm:g} (the KL the memory added at a target over the model without it)"
        )
    return "".join(parts)


def _anon(report: dict) -> str:
    """The anonymous part of the peak, where the run sampled it (RSS also counts the mapped
    feature files' pages, which the kernel can drop)."""
    anon = report.get("peak_anon_bytes")
    return f" (anonymous memory, what must be free: {anon / 1e9:.2f} GB)" if anon else ""


def _shard_anon(report: dict) -> str:
    """Anonymous memory per feature shard, where the run recorded it: the peak a shard reached
    and what stayed after it (freed memory handed back), which shows whether a long run drifts."""
    shards = [s for s in report.get("shard_anon_bytes") or [] if s.get("peak") and s.get("after")]
    if not shards:
        return ""

    def span(values: list[float]) -> str:
        low, high = f"{min(values) / 1e9:.2f}", f"{max(values) / 1e9:.2f}"
        return low if low == high else f"{low}–{high}"

    numbers = ", ".join(str(s["shard"] + 1) for s in shards)
    return (
        f" Anonymous memory per shard, recorded for shard(s) {numbers} of {len(report['plan']['shards'])}: "
        f"peak {span([s['peak'] for s in shards])} GB, {span([s['after'] for s in shards])} GB after each."
    )


def auto_report(entry: Result, root: Path) -> Section:
    r = json.loads((root / entry.file).read_text())
    gb, plan = 1e9, r["plan"]
    stages = ", ".join(f"{k} {v / 60:.0f} min" for k, v in r["stage_seconds"].items())
    text = (
        f"**`indexmem-train auto {entry.model}`** on {plan['threads']} thread(s) of this 2-core machine, "
        f"time budget {plan['hours']:g} h: wall time {r['wall_seconds'] / 3600:.2f} h ({stages}); peak disk "
        f"{r['peak_disk_bytes'] / gb:.1f} GB; peak RSS {r['peak_rss_bytes'] / gb:.2f} GB{_anon(r)}; "
        f"{r['feature_tokens']:,} feature tokens in {len(plan['shards'])} shards, {r['indexer_steps']:,} "
        f"indexer steps.{_shard_anon(r)} The run's own report, `{Path(entry.file).name}`."
    )
    parts = [text]
    if r.get("validation"):
        rows = [[config, found] for config, found in r["validation"].items()]
        parts += [
            "Held-out retrieval windows through the engine (the last question answered, greedy):",
            table(["configuration", "answers found"], rows),
        ]
    return Section("\n\n".join(parts))


def grammar_cost(entry: Result, root: Path) -> Section:
    d = json.loads((root / entry.file).read_text())
    rows = [
        ["a decode step", f"{d['decode_ms']:.2f}", "–"],
        [
            "sampling, no grammar",
            f"{d['plain']['sample_ms']:.3f}",
            f"{d['plain']['sample_ms'] / d['decode_ms']:.1%}",
        ],
        ["sampling with a JSON schema", f"{d['json_schema']['sample_ms']:.3f}", f"{d['ratio']:.1%}"],
    ]
    caption = (
        f"**Sampling cost, {entry.model}** ({d['threads']} thread, {d['replies']} replies of up to "
        f"{d['max_tokens']} tokens each way, llama.cpp's sampler chain with the chat's defaults; the grammar "
        f"refused the chain's first pick on {d['json_schema']['second_passes']} of "
        f"{d['json_schema']['tokens']} tokens). The goal: sampling with a grammar at most 5% of a decode step."
    )
    return Section(f"{caption}\n\n{table(['', 'ms per token', 'of a decode step'], rows)}")


def server_load(entry: Result, root: Path) -> Section:
    d = json.loads((root / entry.file).read_text())
    mib = 2**20
    drift = d["rss_end_bytes"] / d["rss_warm_bytes"] - 1
    rows = [
        [kind, ", ".join(f"{s}: {n}" for s, n in sorted(by.items()))] for kind, by in d["by_kind"].items()
    ]
    caption = (
        f"**`indexmem-serve` under load, {entry.model}**: {d['clients']} concurrent clients on loopback for "
        f"{d['wall_s'] / 60:.1f} min (queue bound {d['queue']}, up to {d['max_tokens']} tokens per reply): "
        f"{d['requests']:,} requests, {d['requests'] - d['unanswered']:,} answered, {d['queue_full_503']:,} "
        f"refused by the full queue (503), {d['server_errors']} other server errors; generation latency p50 "
        f"{d['latency_p50_s']:.1f} s, p99 {d['latency_p99_s']:.1f} s; {d['tok_s']:.1f} tok/s; server RSS "
        f"{d['rss_warm_bytes'] / mib:.0f} MiB after warm-up, {d['rss_end_bytes'] / mib:.0f} MiB at the end "
        f"({drift:+.1%})."
    )
    return Section(f"{caption}\n\n{table(['request kind', 'status: count'], rows)}")


RENDERERS: dict[str, Callable[[Result, Path], Section | None]] = {
    "ruler": ruler,
    "ruler-files": ruler_files,
    "niah": niah,
    "needle": needle,
    "ppl": ppl,
    "speed": speed,
    "cache-memory": cache_memory,
    "train-eval": train_eval,
    "train-config": train_config,
    "fuzz": fuzz,
    "soak": soak,
    "recall-rss": recall_rss,
    "memory-fit": memory_fit,
    "auto-report": auto_report,
    "grammar-cost": grammar_cost,
    "server-load": server_load,
}


def render(entry: Result, root: Path) -> Section | None:
    """The entry's block and outputs; None while its file does not exist or has no complete sample."""
    if not (root / entry.file).exists():
        return None
    return RENDERERS[entry.bench](entry, root)

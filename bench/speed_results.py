"""Reading speed result files (``bench/speed.py --out``, and the older layouts) and comparing our
engine with llama.cpp: a ratio is always against llama.cpp's fastest setting measured in the same
run, and says which setting that was.

A llama.cpp row names its setting in ``"llama_cpp"`` (``{"flash_attn": bool, "type_k": str,
"type_v": str}`` or a description), or the file does for all of them; a file that says nothing was
measured the way ``bench/speed.py`` did before settings were recorded: flash attention on, f16 K/V.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..markdown import table

# bench/speed.py opened llama.cpp with flash_attn=True and llama.cpp's default f16 K/V cache
LEGACY_LLAMA_CPP = {"flash_attn": True, "type_k": "f16", "type_v": "f16"}
LLAMA_CPP = "llama.cpp"


def read_speed(path: Path) -> dict:
    """The file's settings and its rows as ``{"context", "engine", "prefill", "decode"}`` (plus
    whatever else a row records), whatever layout it was written in."""
    data = json.loads(Path(path).read_text())
    rows = []
    for r in data["rows"]:
        if "engine" in r:
            rows.append(r)
        else:  # one configuration per file, ours and llama.cpp's rates side by side
            ours = data.get("policy", "full")
            rows.append(
                dict(context=r["context"], engine=ours, prefill=r["prefill_ours"], decode=r["decode_ours"])
            )
            rows.append(
                dict(
                    context=r["context"],
                    engine=LLAMA_CPP,
                    prefill=r["prefill_llama_cpp"],
                    decode=r["decode_llama_cpp"],
                )
            )
    return {**{k: v for k, v in data.items() if k != "rows"}, "rows": rows}


def is_llama_cpp(row: dict) -> bool:
    return row["engine"].startswith(LLAMA_CPP)


def llama_cpp_setting(row: dict, data: dict) -> str:
    setting = row.get("llama_cpp") or data.get("llama_cpp") or LEGACY_LLAMA_CPP
    if isinstance(setting, str):
        return setting
    attention = "flash attention" if setting["flash_attn"] else "no flash attention"
    k, v = setting["type_k"], setting["type_v"]
    return f"{attention}, {k} K/V" if k == v else f"{attention}, K {k} / V {v}"


@dataclass(frozen=True)
class Ratio:
    value: float
    against: str  # the llama.cpp setting it is against
    settings: int  # how many llama.cpp settings the run measured at that context


def ratio(data: dict, engine: str, context: int, metric: str) -> Ratio | None:
    """``engine``'s ``metric`` ("prefill" or "decode") over llama.cpp's fastest at ``context``."""
    rows = [r for r in data["rows"] if r["context"] == context]
    ours = next((r for r in rows if r["engine"] == engine), None)
    refs = [r for r in rows if is_llama_cpp(r)]
    if ours is None or not refs:
        return None
    best = max(refs, key=lambda r: r[metric])
    return Ratio(ours[metric] / best[metric], llama_cpp_setting(best, data), len(refs))


def engine_label(engine: str, data: dict) -> str:
    if engine == "full":
        return "ours, full KV"
    return f"ours, {engine}" + (f" B={data['budget']}" if data.get("budget") else "")


def speed_table(data: dict) -> str:
    """A row per engine and context: tok/s and the ratio against llama.cpp's fastest setting at
    that context, for prefill and decode separately (the fastest may differ)."""
    lines = []
    for context in sorted({r["context"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["context"] == context]
        for r in sorted(rows, key=lambda r: not is_llama_cpp(r)):  # llama.cpp first, then ours in file order
            label = (
                f"llama.cpp ({llama_cpp_setting(r, data)}, full KV)"
                if is_llama_cpp(r)
                else engine_label(r["engine"], data)
            )
            cells = []
            for metric in ("prefill", "decode"):
                best = max((x[metric] for x in rows if is_llama_cpp(x)), default=None)
                cells += [f"{r[metric]:.1f}", "–" if best is None else f"{r[metric] / best:.2f}x"]
            lines.append([f"{context:,}", label, *cells])
    return table(
        ["context", "engine", "prefill tok/s", "vs llama.cpp", "decode tok/s", "vs llama.cpp"],
        lines,
        align="rl" + "r" * 4,
    )


def speed_caption(data: dict) -> str:
    """The run's settings as the file records them."""
    parts = [Path(data["model"]).name] if data.get("model") else []
    if data.get("cpu"):
        parts.append(data["cpu"])
    if data.get("threads"):
        parts.append(f"{data['threads']} thread{'s' * (data['threads'] != 1)}")
    if data.get("n_batch"):
        parts.append(f"prefill chunk {data['n_batch']}")
    if data.get("decode_tokens"):
        parts.append(f"{data['decode_tokens']} decode tokens")
    if data.get("indexmem"):
        parts.append(f"IndexMem file sha256 {data['indexmem'][:8]}…")
    if data.get("budget"):
        parts.append(
            f"evicting configurations B={data['budget']}"
            + (f", tau={data['tau']}" if data.get("tau") else "")
        )
    return (
        "; ".join(parts)
        + ". Ratios are against the fastest llama.cpp setting of the same run at that context."
    )

"""The chat's slash commands: /stats, /save, /load, /reset, /help."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..errors import IndexmemError

HELP = """commands:
  /stats        tokens seen, cached and evicted per layer, cache bytes, speed
  /save FILE    save the conversation (bounded: the file size does not grow with it)
  /load FILE    continue a conversation saved with the same model and options
  /reset        start a new conversation
  /help         this text
Ctrl-C stops a reply; Ctrl-D exits."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _per_layer(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi} (per layer: {' '.join(map(str, values))})"


def stats_table(st: dict) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    rate = lambda v: f"{v:.1f} tok/s" if v else "–"  # noqa: E731
    rows = [
        ("conversation", f"{st['conversation_tokens']} tokens"),
        (
            "cache",
            f"{st['policy']}"
            + (f", budget {st['budget']} tokens/layer" if st["budget"] else ", full")
            + (", latent memory" if st["memory"] else ""),
        ),
        ("cached", _per_layer(st["tokens_cached"])),
        ("evicted", _per_layer(st["tokens_evicted"])),
        ("KV cache", _mib(st["kv_bytes"])),
        ("index keys", _mib(st["index_bytes"])),
        ("memory", _mib(st["memory_bytes"])),
        ("prompt", rate(st["prompt_tok_s"])),
        ("decode", rate(st["decode_tok_s"])),
    ]
    if st["position_shift"]:
        rows.append(("positions shifted", f"{st['position_shift']} (context shift past n_ctx)"))
    for k, v in rows:
        table.add_row(f"[bold]{k}[/bold]", v)
    return table


def run_command(line: str, conversation, console: Console) -> None:
    """Carry out one slash command; errors are printed, never raised."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    engine = conversation.engine
    try:
        if name == "/help":
            console.print(HELP, highlight=False)
        elif name == "/stats":
            console.print(stats_table(engine.stats()))
        elif name in ("/save", "/load") and not arg:
            console.print(f"[red]usage:[/red] {name} FILE")
        elif name == "/save":
            engine.save_session(arg)
            console.print(f"saved to {arg}", soft_wrap=True)
        elif name == "/load":
            engine.load_session(arg)
            console.print(
                f"loaded {arg}: {engine.stats()['conversation_tokens']} tokens of conversation",
                soft_wrap=True,
            )
        elif name == "/reset":
            conversation.reset()
            console.print("new conversation")
        else:
            console.print(f"[red]unknown command {name}[/red] (/help lists them)", highlight=False)
    except (IndexmemError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)

"""indexmem-chat: chat with a local model, or answer one prompt (--prompt, or a pipe)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..engine.registry import DEFAULT_MODEL
from .common import clean_errors, status

app = typer.Typer(add_completion=False, help=__doc__)


def _reply(engine, messages, opts) -> str:
    prompt = engine.chat_prompt(messages)
    pieces = []
    try:
        for piece in engine.generate(prompt, stream=True, **opts):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    return "".join(pieces)


@app.command()
@clean_errors
def main(
    model: str = typer.Option(DEFAULT_MODEL, help="registry name or path to a .gguf file"),
    prompt: str = typer.Option(None, help="answer this one prompt and exit ('-' reads stdin)"),
    system: str = typer.Option(None, help="system message"),
    max_tokens: int = typer.Option(256, help="tokens per reply at most"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_k: int = typer.Option(40),
    top_p: float = typer.Option(0.95),
    min_p: float = typer.Option(0.05),
    repeat_penalty: float = typer.Option(1.0),
    seed: int = typer.Option(None),
    n_ctx: int = typer.Option(None, help="context length (default: the model's; at most 8192 with full KV)"),
    threads: int = typer.Option(1, help="compute threads"),
    policy: str = typer.Option(None, help="KV eviction: indexmem (default when IndexMem modules are "
                                          "available), full, streaming, h2o, snapkv, tova, keydiff, random"),
    budget: int = typer.Option(None, help="KV tokens kept per layer (indexmem: 1024 unless given)"),
    sinks: int = typer.Option(4, help="first tokens always kept"),
    window: int = typer.Option(None, help="most recent tokens always kept (indexmem: 64, others: 0)"),
    tau: int = typer.Option(None, help="compress every tau tokens past the budget (default 16; 1: every step)"),
    indexmem: Path = typer.Option(None, help="IndexMem sidecar GGUF (default: merged into the model, or "
                                             "shipped for registry models)"),
    no_indexmem: bool = typer.Option(False, "--no-indexmem", help="do not load IndexMem modules"),
    memory: bool = typer.Option(False, "--memory/--no-memory",
                                help="latent memory of evicted tokens (needs IndexMem modules)"),
):
    from ..engine.api import Engine

    if prompt is None and not sys.stdin.isatty():
        prompt = "-"
    if prompt == "-":
        prompt = sys.stdin.read()
    engine = Engine.load(model, n_threads=threads, n_ctx=n_ctx, progress=status, policy=policy,
                         budget=budget, sinks=sinks, window=window, tau=tau, memory=memory,
                         indexmem=False if no_indexmem else (str(indexmem) if indexmem else None))
    opts = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repeat_penalty=repeat_penalty, seed=seed)
    messages = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        _reply(engine, messages + [{"role": "user", "content": prompt}], opts)
        return
    st = engine.stats()
    kv = (f"{st['policy']}, budget {st['budget']} tokens/layer" + (", latent memory" if st["memory"] else "")
          if st["budget"] else "full KV cache")
    status(f"{engine.model_path.name} ({kv}) — Ctrl-C stops a reply, Ctrl-D exits")
    while True:
        try:
            line = input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": _reply(engine, messages, opts)})


if __name__ == "__main__":
    app()

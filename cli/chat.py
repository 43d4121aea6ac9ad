"""indexmem-chat: chat with a local model, or answer one prompt (--prompt, or a pipe)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import typer
from rich.console import Console

from ..engine.registry import DEFAULT_MODEL
from ..errors import IndexmemError
from .chat_commands import run_command
from .common import clean_errors, status
from .engine_options import (
    Batch,
    Budget,
    CacheTypeK,
    CacheTypeV,
    IndexMemFile,
    Memory,
    Model,
    NCtx,
    NoIndexMem,
    Policy,
    RecallAt,
    RecallPerStep,
    RecallScore,
    RecallTier,
    Sinks,
    Tau,
    Threads,
    Window,
    describe_cache,
    load_engine,
)
from .sampling_options import (
    DryMultiplier,
    GrammarFile,
    Json,
    MinP,
    RepeatPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
    reply_grammar,
    sampling_for,
)

app = typer.Typer(add_completion=False, help=__doc__)


@contextmanager
def ctrl_c_cancels(event: threading.Event):
    """While a reply streams, Ctrl-C sets ``event`` (the engine stops at the next token,
    leaving the conversation consistent) instead of interrupting the program."""
    previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reply(conversation, text: str, opts: dict) -> None:
    cancel = threading.Event()
    with ctrl_c_cancels(cancel):
        for piece in conversation.say(text, stream=True, cancel=cancel, **opts):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write(" [stopped]\n" if cancel.is_set() else "\n")
    sys.stdout.flush()
    if conversation.reached_max_tokens:  # a grammar's text (JSON mode) may be unfinished
        status(f"(the reply stopped at --max-tokens {opts['max_tokens']}; it may be cut short)")


@app.command()
@clean_errors
def main(
    model: Model = DEFAULT_MODEL,
    prompt: str = typer.Option(None, help="answer this one prompt and exit ('-' reads stdin)"),
    system: str = typer.Option(None, help="system message"),
    max_tokens: int = typer.Option(256, help="tokens per reply at most"),
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    repeat_penalty: RepeatPenalty = None,
    dry_multiplier: DryMultiplier = None,
    seed: Seed = None,
    grammar_file: GrammarFile = None,
    json_mode: Json = False,
    n_ctx: NCtx = None,
    threads: Threads = 1,
    batch: Batch = 512,
    policy: Policy = None,
    budget: Budget = None,
    sinks: Sinks = 4,
    window: Window = None,
    tau: Tau = None,
    indexmem: IndexMemFile = None,
    no_indexmem: NoIndexMem = False,
    memory: Memory = None,
    recall: RecallTier = None,
    recall_per_step: RecallPerStep = None,
    recall_at: RecallAt = "every_chunk",
    recall_score: RecallScore = "index",
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
):
    if prompt is None and not sys.stdin.isatty():
        prompt = "-"
    if prompt == "-":
        prompt = sys.stdin.read()
    engine = load_engine(
        model,
        n_ctx,
        threads,
        batch,
        policy,
        budget,
        sinks,
        window,
        tau,
        indexmem,
        no_indexmem,
        memory,
        recall,
        cache_type_k,
        cache_type_v,
        recall_per_step=recall_per_step,
        recall_at=recall_at,
        recall_score=recall_score,
    )
    sampling = sampling_for(
        engine,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        dry_multiplier=dry_multiplier,
        seed=seed,
    )
    opts = dict(
        max_tokens=max_tokens, sampling=sampling, grammar=reply_grammar(engine, grammar_file, json_mode)
    )
    conversation = engine.conversation(system)
    if prompt is not None:
        _reply(conversation, prompt, opts)
        return
    status(
        f"{engine.model_path.name} ({describe_cache(engine)}) — /help for commands, Ctrl-C stops a reply, "
        f"Ctrl-D exits"
    )
    console = Console(highlight=False)
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
        if line.startswith("/"):
            run_command(line, conversation, console)
            continue
        try:
            _reply(conversation, line, opts)
        except IndexmemError as exc:  # e.g. a full-KV context that is used up: /reset goes on
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)


if __name__ == "__main__":
    app()

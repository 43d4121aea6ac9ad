"""indexmem-chat's sampling and grammar options, and what they become."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..engine.grammar import JSON_OBJECT_SCHEMA, grammar_text
from ..engine.grammar_check import check_grammar

_DEFAULT = "default: the model's, else llama.cpp's"
Temperature = Annotated[float, typer.Option(help=f"0 = greedy ({_DEFAULT}: 0.8)")]
TopK = Annotated[int, typer.Option(help=f"0 = off ({_DEFAULT}: 40)")]
TopP = Annotated[float, typer.Option(help=f"1 = off ({_DEFAULT}: 0.95)")]
MinP = Annotated[float, typer.Option(help=f"0 = off ({_DEFAULT}: 0.05)")]
RepeatPenalty = Annotated[float, typer.Option(help="1 = off (default 1)")]
DryMultiplier = Annotated[float, typer.Option(help="DRY repetition penalty, 0 = off (default 0.8)")]
Seed = Annotated[int, typer.Option(help="sampling seed (same seed, same prompt: same reply)")]
GrammarFile = Annotated[
    Path,
    typer.Option("--grammar-file", help="constrain every reply to this GBNF grammar (llama.cpp's format)"),
]
Json = Annotated[bool, typer.Option("--json", help="every reply is a JSON object")]


def sampling_for(engine, **given):
    """The engine's chat defaults with the options that were given (None: not given)."""
    return engine.sampling_defaults.with_(**{k: v for k, v in given.items() if v is not None})


def reply_grammar(engine, grammar_file: Path | None, json_mode: bool) -> str | None:
    """The GBNF every reply is held to, checked once before the chat starts."""
    if grammar_file is not None and json_mode:
        raise typer.BadParameter("give --grammar-file or --json, not both")
    text = None
    if grammar_file is not None:
        try:
            text = grammar_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read the grammar file {grammar_file}: {exc}") from exc
    text = grammar_text(text, JSON_OBJECT_SCHEMA if json_mode else None)
    if text is not None:
        check_grammar(engine.model_path, text)
    return text

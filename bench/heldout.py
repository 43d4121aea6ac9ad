"""Held-out long text for perplexity: the licence texts Debian ships in base-files.

Real English prose, offline on every Debian machine, and never used for training (the training
corpus is plays, Python and kernel documentation) nor for evaluation (Paul Graham essays,
SQuAD, HotpotQA)."""

from pathlib import Path

LICENSES = (
    "GPL-3",
    "Apache-2.0",
    "GFDL-1.3",
    "GPL-2",
    "LGPL-2.1",
    "MPL-2.0",
    "MPL-1.1",
    "Artistic",
    "CC0-1.0",
)
ROOT = Path("/usr/share/common-licenses")


def python_source_text() -> str:
    """CPython standard-library sources: real text on every machine, neither training corpus
    nor evaluation data (speed runs and development runs use it)."""
    import argparse  # noqa: E401
    import asyncio.base_events
    import email.message
    import inspect
    import json.decoder
    import logging
    import textwrap

    return "\n".join(
        inspect.getsource(m)
        for m in (argparse, logging, email.message, textwrap, json.decoder, asyncio.base_events)
    )


def heldout_text() -> str:
    missing = [n for n in LICENSES if not (ROOT / n).exists()]
    if missing:
        raise FileNotFoundError(f"held-out texts missing from {ROOT}: {missing} (Debian base-files)")
    return "\n\n".join((ROOT / n).read_text(errors="replace") for n in LICENSES)


def heldout_windows(engine, n_tokens: int, n_windows: int) -> list[list[int]]:
    """``n_windows`` disjoint windows of ``n_tokens`` tokens (BOS first where the model wants it)."""
    body = engine.tokenize(heldout_text(), add_special=False)
    head = engine.tokenize("", add_special=True)
    size = n_tokens - len(head)
    if len(body) < size * n_windows:
        raise ValueError(f"held-out text has {len(body)} tokens, {size * n_windows} needed")
    return [head + body[i * size : (i + 1) * size] for i in range(n_windows)]

"""What every command line tool shares: clean error exits and a progress printer."""

from __future__ import annotations

import functools
import sys

from rich.console import Console

from ..errors import IndexmemError

err_console = Console(stderr=True)


def clean_errors(fn):
    """Turn indexmem's own exceptions into one red line and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (IndexmemError, ValueError, TypeError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(1)

    return wrapper


def status(msg: str) -> None:
    err_console.print(f"[dim]{msg}[/dim]", highlight=False)

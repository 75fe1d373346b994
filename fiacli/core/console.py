"""Terminal output shared by every command: results on stdout, messages on stderr.

Progress bars and colours appear only on a terminal, so piping or ``--json`` stays clean.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
# soft_wrap: a message is one line whatever the terminal width (logs are read line by line)
err_console = Console(stderr=True, soft_wrap=True)


def clip(text: object, limit: int = 120) -> str:
    """``repr``-free short form of ``text`` for a message: at most ``limit`` characters, the cut
    marked with "…" and the full length (a 25 kB expression must not become a 25 kB line)."""
    value = " ".join(str(text).split())
    if len(value) <= limit:
        return value
    return f"{value[: limit - 1]}… ({len(value):,} characters)"


def warn(message: str) -> None:
    """One warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """One informational line on stderr (keeps stdout for results)."""
    err_console.print(message, highlight=False, soft_wrap=True)


def print_json(payload: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no rich markup or wrapping."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress(*extra_columns: Any, transient: bool = False) -> Progress:
    """A rich progress bar on stderr, disabled when stderr is not a terminal."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=transient,
    )

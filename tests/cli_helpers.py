"""Helpers for tests of the command line's error output."""

from __future__ import annotations

from typing import Any


def one_line(result: Any) -> str:
    """The error message, asserting it is a single ``error:`` line and no traceback (a narrow
    terminal may wrap the line: its pieces are joined again)."""
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr
    return " ".join(ln.strip() for ln in result.stderr.splitlines())

"""Exceptions a user can cause. The CLI turns them into one line on stderr and exit code 1."""

from __future__ import annotations


class FiacliError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class UsageError(FiacliError):
    """Options that do not fit together; the CLI exits with code 2 like any usage error."""

    exit_code = 2

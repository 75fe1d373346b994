"""`fiacli eval` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from fiacli.errors import FiacliError


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate() -> None:
        """Not implemented yet."""
        raise FiacliError("fiacli eval is not implemented yet")

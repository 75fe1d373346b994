"""`fiacli parse` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from fiacli.errors import FiacliError


def register(app: typer.Typer) -> None:
    @app.command("parse")
    def parse() -> None:
        """Not implemented yet."""
        raise FiacliError("fiacli parse is not implemented yet")

"""`fiacli convert` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from fiacli.errors import FiacliError


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert() -> None:
        """Not implemented yet."""
        raise FiacliError("fiacli convert is not implemented yet")

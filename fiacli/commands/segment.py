"""`fiacli segment` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from fiacli.errors import FiacliError


def register(app: typer.Typer) -> None:
    @app.command("segment")
    def segment() -> None:
        """Not implemented yet."""
        raise FiacliError("fiacli segment is not implemented yet")

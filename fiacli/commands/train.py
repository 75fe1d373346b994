"""`fiacli train` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from fiacli.errors import FiacliError


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train() -> None:
        """Not implemented yet."""
        raise FiacliError("fiacli train is not implemented yet")

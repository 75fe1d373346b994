"""`fiacli data …`: dataset tools (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from fiacli.cli import new_app

    data_app = new_app(help="Dataset tools: validate a download, generate synthetic data.")
    app.add_typer(data_app, name="data")

    @data_app.command("check")
    def check() -> None:
        """Not implemented yet."""
        from fiacli.errors import FiacliError

        raise FiacliError("fiacli data check is not implemented yet")

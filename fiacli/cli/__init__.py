"""The command line (the top layer: nothing else in fiacli imports it)."""

from fiacli.cli.main import app, main

__all__ = ["app", "main"]

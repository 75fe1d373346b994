"""What every command module shares: the error-handling group, example epilogs, the decorator.

Command modules import from here and never from :mod:`fiacli.cli.main`, so the app imports the
commands and nothing imports back (as in rasterio's ``rio``, commands are plain module-level
functions that the app attaches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from fiacli.core.console import err_console
from fiacli.core.errors import FiacliError

F = TypeVar("F", bound=Callable[..., Any])


class FiacliGroup(TyperGroup):
    """Turns user errors and Ctrl-C into exit codes instead of tracebacks, for every subcommand."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FiacliError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]", highlight=False)
            raise typer.Exit(130) from None


def examples(*lines: str) -> str:
    """An epilog listing example invocations, one per line."""
    body = "\n\n".join(f"  [cyan]$ {escape(line)}[/cyan]" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"


def new_app(**kwargs: Any) -> typer.Typer:
    """A Typer app with fiacli's conventions (rich help, -h, no locals in tracebacks)."""
    return typer.Typer(
        cls=FiacliGroup,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        pretty_exceptions_show_locals=False,
        add_completion=False,
        no_args_is_help=True,
        **kwargs,
    )


def command(name: str, **settings: Any) -> Callable[[F], F]:
    """Mark a module-level function as the command ``name``; :mod:`fiacli.cli.main` attaches it
    with ``settings`` (``help``, ``epilog`` …) passed to ``Typer.command``."""

    def mark(fn: F) -> F:
        fn.typer_command = {"name": name, **settings}  # type: ignore[attr-defined]
        return fn

    return mark

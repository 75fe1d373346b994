"""The ``fiacli`` command line: thin Typer commands over library functions.

Each command lives in ``fiacli/commands/<name>.py`` and only parses options, calls a function that
is importable from Python, and prints the result. Errors a user can cause (:class:`FiacliError`)
become one red line on stderr and exit code 1; usage errors exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from fiacli import __version__
from fiacli.console import err_console
from fiacli.errors import FiacliError


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


app = new_app(
    help="Referring remote-sensing image segmentation with FIANet: describe an object, get its "
    "pixels back from a GeoTIFF, georeferenced.",
    epilog=examples(
        'fiacli parse "the white van on the left road"',
        'fiacli segment scene.tif "the storage tank on the lower left" -o tank.gpkg',
    ),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fiacli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Referring remote-sensing image segmentation with FIANet."""


def _register() -> None:
    """Attach every command module; each module exposes ``register(app)``."""
    from fiacli.commands import convert, data, evaluate, models, parse, report, segment, train

    for module in (parse, train, evaluate, report, segment, models, convert, data):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fiacli")

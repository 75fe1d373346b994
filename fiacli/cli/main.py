"""The ``fiacli`` command line: thin Typer commands over library functions.

Each command lives in ``fiacli/cli/<name>.py`` as a module-level function that only parses
options, calls a function importable from Python, and prints the result; this module attaches
them. Errors a user can cause (:class:`FiacliError`) become one red line on stderr and exit
code 1; usage errors exit 2; Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129 after the same cleanup;
an unexpected exception is one line asking for a bug report (``fiacli --debug …`` shows its
traceback). See :mod:`fiacli.cli.common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fiacli import __version__
from fiacli.cli import convert, data, evaluate, models, parse, report, segment, train
from fiacli.cli.common import examples, new_app

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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the traceback of an unexpected error (and GDAL's own messages).",
        ),
    ] = False,
) -> None:
    """Referring remote-sensing image segmentation with FIANet."""


for _command in (parse.parse, train.train, evaluate.evaluate, report.report, segment.segment):
    app.command(**_command.typer_command)(_command)
app.add_typer(models.models_app, name="models")
app.command(**convert.convert.typer_command)(convert.convert)
app.add_typer(data.data_app, name="data")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fiacli")

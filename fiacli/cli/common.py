"""What every command module shares: the error-handling group, example epilogs, the decorator.

Command modules import from here and never from :mod:`fiacli.cli.main`, so the app imports the
commands and nothing imports back (as in rasterio's ``rio``, commands are plain module-level
functions that the app attaches).

Whatever goes wrong, a command ends with one ``error: …`` line on stderr (never a traceback, at
any terminal width) and an exit code that says what kind of failure it was:

* 1: a problem with the input or environment (:class:`FiacliError`, a full disk, an OS error),
  or an unexpected exception (a bug: the line says to report it; ``fiacli --debug …`` shows the
  traceback);
* 2: a usage error (an unknown option, a bad value, options that do not fit together);
* 128 + N: signal N: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (after the same cleanup as Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from fiacli.core.console import err_console
from fiacli.core.errors import FiacliError
from fiacli.core.signals import (
    interrupt_exit_code,
    interrupt_note,
    signal_name,
    signals_as_interrupts,
)

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
    from typer.exceptions import TyperException as ClickException
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "FIACLI_DEBUG"
BUG_EXIT_CODE = 1


def one_line(text: str) -> str:
    """``text`` on one line: newlines and runs of spaces become one space."""
    return " ".join(str(text).split())


def print_error(message: str) -> None:
    """The one ``error: …`` line (soft-wrapped: never broken at the terminal width)."""
    err_console.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False)


def _help_only(argv: Sequence[str]) -> bool:
    """A call that only prints help or the version: GDAL (and its load time) is not needed."""
    return not argv or any(a in ("-h", "--help", "--version") for a in argv)


def _debug_requested(ctx: Any = None, args: Sequence[str] | None = None) -> bool:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return args is not None and "--debug" in list(args)


def _command_path(ctx: Any) -> str:
    sub = getattr(ctx, "invoked_subcommand", None)
    words = ["fiacli", *ctx.command_path.split()[1:], *([sub] if sub else [])]
    return " ".join(words)


def describe_unexpected(exc: BaseException, command: str) -> tuple[str, int]:
    """The line and exit code for an exception no command turned into a FiacliError."""
    from fiacli.core.io import is_disk_full

    detail = one_line(str(exc)) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:300] + " …"
    if is_disk_full(exc):
        return f"disk full (or over the file-size limit) in {command}: {detail}", 1
    if isinstance(exc, MemoryError) or "out of memory" in detail.lower():
        hint = "; try a smaller --batch-size or --chip" if "cuda" in detail.lower() else ""
        return f"out of memory in {command}{hint}: {detail}", 1
    if type(exc).__module__.split(".")[0] in ("rasterio", "pyogrio", "fiona"):
        from fiacli.geo.read_errors import exception_detail

        detail = exception_detail(exc)
        if "write" in detail.lower():  # libtiff's own reason (ENOSPC, EFBIG) never reaches here
            detail += " (is the disk full, or the file over a file-size limit?)"
        return f"GDAL failed in {command}: {detail}", 1
    if "DataLoader worker" in detail:  # killed by the OOM killer or a signal sent to it
        return (
            f"a data-loading worker of {command} died ({detail}); out of memory? "
            "--num-workers 0 loads data in the main process",
            1,
        )
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}", 1
    return (
        f"unexpected {type(exc).__name__} in {command}: {detail}. This is a bug in fiacli: "
        f"please report it with the output of the same command run with --debug "
        f"(fiacli --debug {command.split(' ', 1)[-1]} …)",
        BUG_EXIT_CODE,
    )


class _UntypedFlags:
    """Flags show no ``<bool>`` in ``--help``: Typer labels every option with its type, and a
    flag takes no value (``--demo <bool>`` reads as if it did)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class FiacliCommand(_UntypedFlags, TyperCommand):
    """A fiacli command (see :class:`_UntypedFlags`)."""


class FiacliGroup(_UntypedFlags, TyperGroup):
    """Turns every failure into one ``error:`` line and an exit code, for every subcommand."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise  # usage errors: formatted in main(); Exit: a chosen exit code
        except FiacliError as exc:
            print_error(str(exc))
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt as exc:
            code = interrupt_exit_code(exc)
            how = "Ctrl-C" if code == 130 else signal_name(code - 128)
            note = interrupt_note(exc)
            print_error(f"interrupted ({how})" + (f"; {note}" if note else ""))
            raise typer.Exit(code) from None
        except Exception as exc:
            if _debug_requested(ctx):
                raise
            if isinstance(exc, BrokenPipeError):  # `fiacli … | head`: the reader left
                _quiet_stdout()
                raise typer.Exit(1) from None
            message, code = describe_unexpected(exc, _command_path(ctx))
            print_error(message)
            raise typer.Exit(code) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Click's main without its boxed usage errors: each is one ``error:`` line, exit 2."""
        argv = list(sys.argv[1:] if args is None else args)
        if not _debug_requested(args=argv) and not _help_only(argv):
            from fiacli.geo.read_errors import quiet_gdal_stderr

            quiet_gdal_stderr()  # no "ERROR 1: …" or libtiff line before fiacli's own
        try:
            with signals_as_interrupts():
                code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            if not standalone_mode:
                raise
            sys.exit(exc.exit_code)  # the help is already printed (as Typer does)
        except ClickException as exc:
            if not standalone_mode:
                raise
            print_error(_usage_line(exc))
            sys.exit(exc.exit_code)
        except typer.Abort:  # EOF or Ctrl-C at a prompt
            if not standalone_mode:
                raise
            print_error("aborted")
            sys.exit(1)
        except KeyboardInterrupt as exc:  # before a command ran (while parsing options)
            if not standalone_mode:
                raise
            sys.exit(interrupt_exit_code(exc))
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_line(exc: Any) -> str:
    message = one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _quiet_stdout() -> None:
    """After a broken pipe: stop Python from complaining again while flushing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def examples(*lines: str) -> str:
    """An epilog listing example invocations, one per line."""
    body = "\n\n".join(f"  [cyan]$ {escape(line)}[/cyan]" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"


class _App(typer.Typer):
    """A Typer app whose commands are :class:`FiacliCommand` unless told otherwise."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or FiacliCommand, **kwargs)


def new_app(**kwargs: Any) -> typer.Typer:
    """A Typer app with fiacli's conventions (rich help, -h, no locals in tracebacks)."""
    return _App(
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

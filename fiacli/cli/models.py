"""`fiacli models`: the bundled model and the checkpoints registered under short names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fiacli.cli.common import examples, new_app
from fiacli.cli.options import JsonOutput

HELP = (
    "List the models -m accepts by name: the bundled demo model and the ones you registered.\n\n"
    "Registered names are kept in models.json in the fiacli config folder ($FIACLI_HOME, else "
    "$XDG_CONFIG_HOME/fiacli or ~/.config/fiacli); the checkpoint files stay where they are."
)


def _table(entries: list) -> object:
    from rich.table import Table

    table = Table(title="models (-m NAME)", title_justify="left")
    for col in ("name", "source", "trained on", "image", "val mIoU", "size", "note", "path"):
        right = col in ("image", "val mIoU", "size")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for e in entries:
        d = e.details
        if not e.exists:
            row = ["[red]missing[/red]", "", "", ""]
        elif "error" in d:
            row = [f"[red]{d['error']}[/red]", "", "", ""]
        else:
            miou = d.get("val_miou")
            row = [
                str(d.get("dataset") or "?"),
                f"{d.get('image_size')}²",
                f"{miou:.3f}" if isinstance(miou, (int, float)) else "",
                f"{d.get('size_mb')} MB",
            ]
        table.add_row(e.name, e.source, *row, e.description, e.path)
    return table


models_app = new_app(
    help=HELP,
    epilog=examples(
        "fiacli models",
        "fiacli models add rrsisd ~/models/fianet_rrsisd.safetensors",
        'fiacli segment scene.tif "the ship on the left" -m rrsisd -o ship.gpkg',
        "fiacli models remove rrsisd",
        "fiacli models --json",
    ),
)
models_app.info.no_args_is_help = False  # bare `fiacli models` lists them


@models_app.callback(invoke_without_command=True)
def list_models(
    ctx: typer.Context,
    as_json: JsonOutput = False,
) -> None:
    """List the bundled and registered models."""
    if ctx.invoked_subcommand is not None:
        return
    from fiacli.app.named_models import list_models as entries_of
    from fiacli.app.named_models import registry_path
    from fiacli.core.console import console, print_json

    entries = entries_of(details=True)
    if as_json:
        print_json({"registry": str(registry_path()), "models": [e.to_dict() for e in entries]})
        return
    console.print(_table(entries))
    console.print(f"registry: {registry_path()}", highlight=False, style="dim")


@models_app.command(
    "add",
    epilog=examples(
        "fiacli models add rrsisd ~/models/fianet_rrsisd.safetensors",
        "fiacli models add mine runs/synth/best.safetensors -d 'synthetic, 12 epochs' -f",
    ),
)
def add(
    name: Annotated[str, typer.Argument(help="Short name to use with -m.")],
    path: Annotated[Path, typer.Argument(help="A fiacli checkpoint (.safetensors).")],
    description: Annotated[
        str, typer.Option("-d", "--description", help="A note shown in the list.")
    ] = "",
    overwrite: Annotated[
        bool, typer.Option("-f", "--overwrite", help="Replace a name already registered.")
    ] = False,
) -> None:
    """Register a checkpoint under a short name (the file is checked, not copied)."""
    from fiacli.app.named_models import add_model
    from fiacli.core.console import console

    entry = add_model(name, path, description=description, overwrite=overwrite)
    console.print(f"registered {entry.name} -> {entry.path}", highlight=False)


@models_app.command("remove", epilog=examples("fiacli models remove rrsisd"))
def remove(name: Annotated[str, typer.Argument(help="A registered name.")]) -> None:
    """Forget a registered name (the checkpoint file is left alone)."""
    from fiacli.app.named_models import remove_model
    from fiacli.core.console import console

    entry = remove_model(name)
    console.print(f"removed {entry.name} (file kept: {entry.path})", highlight=False)

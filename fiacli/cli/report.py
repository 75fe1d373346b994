"""`fiacli report`: curves, metric table and best/worst predictions of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import Device, JsonOutput, Overwrite


@command(
    "report",
    epilog=examples(
        "fiacli report runs/synth",
        "fiacli report runs/synth -o synth.png --examples 8",
        "fiacli eval -m runs/rrsisd/best.safetensors --data-root data/rrsisd --split val "
        "--save-preds preds/ && fiacli report runs/rrsisd --preds preds/",
    ),
)
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by fiacli train.")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help=".html or .png. \\[default: RUN_DIR/report.html]"),
    ] = None,
    preds: Annotated[
        Path | None,
        typer.Option(help="Folder from fiacli eval --save-preds. \\[default: RUN_DIR/preds]"),
    ] = None,
    no_preds: Annotated[
        bool,
        typer.Option(
            "--no-preds", help="Do not compute predictions when no --preds folder exists."
        ),
    ] = False,
    n_examples: Annotated[
        int, typer.Option("--examples", help="How many best and how many worst to show.")
    ] = 6,
    device: Device = "auto",
    overwrite: Overwrite = False,
    as_json: JsonOutput = False,
) -> None:
    """Report a training run: curves, metrics per epoch, best and worst predictions.

    One self-contained HTML page (or one PNG): training loss and learning rate per step,
    validation mIoU/oIoU/Pr@0.5 per epoch, the metric table with the best epoch marked, and
    the best and worst validation predictions. Predictions come from --preds (an
    `fiacli eval --save-preds` folder), else RUN_DIR/preds, else they are computed with the
    run's best checkpoint on its validation split (the dataset must still be at the run's
    data_root).
    """
    from fiacli.app.report import summary, write_report
    from fiacli.core.console import console, print_json

    path, rep = write_report(
        run_dir, output, preds=preds, compute=not no_preds, examples=n_examples,
        device=device, overwrite=overwrite,
    )  # fmt: skip
    if as_json:
        best = rep.run.best_epoch
        print_json({**summary(rep.run), "report": str(path), "best": best,
                    "predictions": len(rep.predictions)})  # fmt: skip
        return
    console.print(f"wrote {path}", highlight=False)

"""Typer options shared by several commands, declared once.

An option that means the same thing in several commands (``--json``, ``-f/--overwrite``,
``--device``, ``--data-root``, ``--num-workers``) is defined here once, so its flags and help text
cannot drift apart between commands. Options whose meaning differs per command (``-o``,
``--batch-size``, ``--dataset``, ``-m``) stay in their command.

The ``Optional…`` variants are for ``fiacli train``, where ``None`` means "keep the value of the
dataset's recipe or of --config".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fiacli.core.datasets import DATASETS, RELEASED_DATASET_NAMES

JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

Overwrite = Annotated[
    bool, typer.Option("-f", "--overwrite", help="Replace existing output files.")
]

_DEVICE = typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
Device = Annotated[str, _DEVICE]
OptionalDevice = Annotated[str | None, _DEVICE]

_LAYOUTS = " or ".join(DATASETS[name].title for name in RELEASED_DATASET_NAMES)
_DATA_ROOT = typer.Option("--data-root", help=f"Dataset folder ({_LAYOUTS} layout).")
DataRoot = Annotated[Path, _DATA_ROOT]
OptionalDataRoot = Annotated[Path | None, _DATA_ROOT]

_NUM_WORKERS = typer.Option("--num-workers", help="Data loading processes (0: the main process).")
NumWorkers = Annotated[int, _NUM_WORKERS]
OptionalNumWorkers = Annotated[int | None, _NUM_WORKERS]

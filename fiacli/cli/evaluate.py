"""`fiacli eval`: docs/metrics.md metrics of a checkpoint on a split, as the paper's Tables I–IV."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import DataRoot, Device, JsonOutput, NumWorkers
from fiacli.core.datasets import DatasetChoice


@command(
    "eval",
    epilog=examples(
        "fiacli eval --model runs/rrsisd/best.safetensors --dataset rrsisd "
        "--data-root data/rrsisd --split test",
        "fiacli eval --model fianet_refsegrs.safetensors --dataset refsegrs "
        "--data-root data/refsegrs --full-res --json",
        "fiacli eval --model runs/synth/best.safetensors --dataset synth --data-root "
        "data/synth --save-preds preds/ --strip-position",
    ),
)
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="fiacli checkpoint.")],
    data_root: DataRoot,
    dataset: Annotated[
        DatasetChoice, typer.Option(help="The dataset, or auto (detect the layout).")
    ] = "auto",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    full_res: Annotated[
        bool,
        typer.Option("--full-res", help="Score at each image's own size, not at 480²."),
    ] = False,
    strip_position: Annotated[
        bool,
        typer.Option(
            "--strip-position", help="Remove the spatial phrase from every expression first."
        ),
    ] = False,
    save_preds: Annotated[
        Path | None,
        typer.Option(help="Write <ref_id>.png predictions and overlays to this new folder."),
    ] = None,
    parse_cache: Annotated[
        Path | None, typer.Option(help="Reuse/write parses in this JSONL cache.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward.")] = 8,
    num_workers: NumWorkers = 0,
    device: Device = "auto",
    json_out: JsonOutput = False,
    csv_out: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Print CSV on stdout (percent, as the paper's tables; --json gives fractions).",
        ),
    ] = False,
) -> None:
    """Pr@0.5–0.9, oIoU and mIoU of a checkpoint on one split, and mIoU per category.

    Uses the parse settings recorded in the checkpoint. Categories: RRSIS-D by category id,
    RefSegRS by every class name in the sentence (as the paper's Tables II and IV).
    """
    from fiacli.core.console import console, print_json, progress
    from fiacli.core.errors import UsageError
    from fiacli.training.evaluate import (
        category_table,
        evaluate_checkpoint,
        overall_table,
        to_csv,
    )

    if json_out and csv_out:
        raise UsageError("choose one of --json and --csv")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    from fiacli.core.io import refuse_overwriting_inputs

    # the predictions folder and the parse cache are written: neither may be what eval reads
    refuse_overwriting_inputs([save_preds], [model, data_root, parse_cache])
    refuse_overwriting_inputs([parse_cache], [model, data_root])
    bar = progress(transient=True)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = bar.add_task(f"eval {split}", total=total)

    with bar:
        result = evaluate_checkpoint(
            model,
            dataset,
            data_root,
            split,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            full_res=full_res,
            strip_position=strip_position,
            save_preds=save_preds,
            parse_cache=parse_cache,
            on_start=on_start,
            on_batch=lambda n: bar.advance(task, n),
        )
    if json_out:
        print_json(result.to_dict())
    elif csv_out:
        sys.stdout.write(to_csv(result))
    else:
        label = model.stem + (" (no position)" if strip_position else "")
        console.print(overall_table(result, label))
        if result.metrics.get("per_category"):
            console.print(category_table(result, label))

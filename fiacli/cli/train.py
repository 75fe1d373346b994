"""`fiacli train`: the released recipe per dataset, every value overridable; DDP under torchrun."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import (
    JsonOutput,
    OptionalDataRoot,
    OptionalDevice,
    OptionalNumWorkers,
)
from fiacli.core.datasets import DATASETS, RELEASED_DATASET_NAMES, DatasetName
from fiacli.text.parsing import ParseMode
from fiacli.training.recipe import SelectMetric, TrainConfig, TrainPrecision

# Options of the command itself, not values of the run: every other option is named like the
# TrainConfig field it sets (config_overrides refuses any that is neither).
COMMAND_OPTIONS = frozenset({"config", "resume", "json_out"})


def config_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig values given on the command line: each option named like a field and set
    (not None); paths as strings, as in config.yaml."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    stray = sorted(set(params) - fields - COMMAND_OPTIONS)
    if stray:
        raise TypeError(
            f"train options {', '.join(stray)} are neither TrainConfig fields nor command options"
        )
    return {
        name: str(value) if isinstance(value, Path) else value
        for name, value in params.items()
        if name in fields and value is not None
    }


def _help() -> str:
    """The command's help, with the released recipes as the table and TrainConfig state them."""
    released = "; ".join(
        f"{d.title} {d.recipe['epochs']} epochs lr {d.recipe['lr']:g} num_tmem "
        f"{d.recipe['num_tmem']}" + (" with box erasing" if d.recipe["box_erasing"] else "")
        for d in (DATASETS[name] for name in RELEASED_DATASET_NAMES)
    )
    c = TrainConfig
    return (
        "Train FIANet with the released recipe of the dataset, on CPU, one GPU or many.\n\n"
        f"Defaults per dataset: {released}; both AdamW (weight decay {c.weight_decay:g}), poly "
        f"decay per iteration, {c.ce_weight:g}·CE + {c.dice_weight:g}·Dice (summed over "
        f"samples and classes, as released), batch "
        f"{c.batch_size}, {c.image_size}². The run folder gets config.yaml, metrics.jsonl, "
        "last.safetensors (+ last.state.pt to resume) and best.safetensors (best val "
        f"{c.select_metric})."
    )


@command(
    "train",
    help=_help(),
    epilog=examples(
        "fiacli train --dataset rrsisd --data-root data/rrsisd -o runs/rrsisd",
        "fiacli train --dataset synth --data-root data/synth -o runs/synth --epochs 4",
        "fiacli train -o runs/rrsisd --resume",
        "torchrun --nproc_per_node 4 -m fiacli train --dataset refsegrs --data-root "
        "data/refsegrs -o runs/refsegrs",
    ),
)
def train(
    ctx: typer.Context,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Run folder (checkpoints, config, logs).")
    ],
    dataset: Annotated[
        DatasetName | None, typer.Option(help="Picks the dataset's recipe defaults.")
    ] = None,
    data_root: OptionalDataRoot = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML file of config keys; flags override it."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in -o exactly where it stopped.")
    ] = False,
    preset: Annotated[
        str | None, typer.Option(help="Model preset: fianet-swinb or fianet-tiny.")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Epochs ("
            + ", ".join(f"{d.recipe['epochs']} {d.name}" for d in DATASETS.values())
            + ")."
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step per process.")] = None,
    grad_accum: Annotated[
        int | None, typer.Option(help="Micro-batches per optimiser step.")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input side (pixels).")] = None,
    num_tmem: Annotated[int | None, typer.Option(help="TMEM blocks.")] = None,
    token_length: Annotated[int | None, typer.Option(help="Tokens per expression.")] = None,
    parse_mode: Annotated[
        ParseMode | None,
        typer.Option(help=f"Sentence parsing (default: {TrainConfig.parse_mode})."),
    ] = None,
    box_erasing: Annotated[
        float | None, typer.Option(help="Share of training refs with random black boxes.")
    ] = None,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="Local Swin checkpoint to start from.")
    ] = None,
    text_encoder: Annotated[
        str | None, typer.Option(help="Text encoder: local folder or Hugging Face name.")
    ] = None,
    freeze_text_encoder: Annotated[
        bool | None,
        typer.Option(
            "--freeze-text-encoder/--train-text-encoder",
            help="Keep the text encoder fixed (its features are then computed once).",
        ),
    ] = None,
    select_metric: Annotated[
        SelectMetric | None,
        typer.Option(
            help=f"Best checkpoint on this val metric (default: {TrainConfig.select_metric})."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    deterministic: Annotated[
        bool | None, typer.Option("--deterministic", help="Deterministic kernels (slower).")
    ] = None,
    device: OptionalDevice = None,
    precision: Annotated[
        TrainPrecision | None,
        typer.Option(help="auto: bf16 (or fp16) on CUDA, fp32 on CPU."),
    ] = None,
    num_workers: OptionalNumWorkers = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop (resumably) after this many optimiser steps.")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Stop (resumably) after this many minutes.")
    ] = None,
    tensorboard: Annotated[
        bool | None, typer.Option("--tensorboard", help="Also log to TensorBoard.")
    ] = None,
    json_out: JsonOutput = False,
) -> None:
    from fiacli.core.console import info, print_json
    from fiacli.training.loop import train as run_training
    from fiacli.training.recipe import load_run_config, resolve_config

    overrides = config_overrides(ctx.params)
    if resume:
        cfg = load_run_config(output, overrides)
    else:
        from fiacli.core.errors import UsageError

        if data_root is None and config is None:
            raise UsageError("--data-root is required (or a --config that sets data_root)")
        cfg = resolve_config(dataset, config_file=config, overrides=overrides)
        if not cfg.data_root:
            raise UsageError("--data-root is required (or a --config that sets data_root)")
        from fiacli.core.io import refuse_overwriting_inputs
        from fiacli.training.loop import RUN_FILES

        # a new run writes its resolved config.yaml (and logs) into -o: --config must survive
        refuse_overwriting_inputs([output / name for name in RUN_FILES], [config])
    result = run_training(cfg, resume=resume)
    summary = {
        "run_dir": str(result.run_dir),
        "best": str(result.best) if result.best else None,
        "last": str(result.last) if result.last else None,
        f"best_val_{cfg.select_metric}": result.best_metric,
        "epoch": result.epoch,
        "step": result.step,
        "stopped": result.stopped,
    }
    if json_out:
        print_json(summary)
    else:
        best = (
            f", best val {cfg.select_metric} {result.best_metric:.4f}"
            if (result.best_metric is not None)
            else ""
        )
        info(
            f"{result.stopped} at epoch {result.epoch}, step {result.step}{best}: {result.run_dir}"
        )

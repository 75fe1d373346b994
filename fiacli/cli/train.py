"""`fiacli train`: the released recipe per dataset, every value overridable; DDP under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import (
    JsonOutput,
    OptionalDataRoot,
    OptionalDevice,
    OptionalNumWorkers,
)


@command(
    "train",
    epilog=examples(
        "fiacli train --dataset rrsisd --data-root data/rrsisd -o runs/rrsisd",
        "fiacli train --dataset synth --data-root data/synth -o runs/synth --epochs 4",
        "fiacli train -o runs/rrsisd --resume",
        "torchrun --nproc_per_node 4 -m fiacli train --dataset refsegrs --data-root "
        "data/refsegrs -o runs/refsegrs",
    ),
)
def train(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Run folder (checkpoints, config, logs).")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(help="rrsisd, refsegrs or synth; picks the released recipe's defaults."),
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
    epochs: Annotated[int | None, typer.Option(help="Epochs (60 RefSegRS, 40 RRSIS-D).")] = None,
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
        str | None, typer.Option(help="fiacli (default) or released sentence parsing.")
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
        str | None, typer.Option(help="Best checkpoint on val miou (default) or oiou.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    deterministic: Annotated[
        bool | None, typer.Option("--deterministic", help="Deterministic kernels (slower).")
    ] = None,
    device: OptionalDevice = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16."),
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
    """Train FIANet with the released recipe of the dataset (§4), on CPU, one GPU or many.

    Defaults per dataset: RRSIS-D 40 epochs lr 3e-5 num_tmem 3 with box erasing; RefSegRS 60
    epochs lr 5e-5 num_tmem 1; both AdamW (weight decay 0.01), poly decay per iteration,
    0.9·CE + 0.1·Dice, batch 8, 480². The run folder gets config.yaml, metrics.jsonl,
    last.safetensors (+ last.state.pt to resume) and best.safetensors (best val mIoU).
    """
    from fiacli.core.console import info, print_json
    from fiacli.training.loop import train as run_training
    from fiacli.training.recipe import load_run_config, resolve_config

    overrides = {
        "dataset": dataset,
        "data_root": str(data_root) if data_root is not None else None,
        "output": str(output),
        "preset": preset,
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "image_size": image_size,
        "num_tmem": num_tmem,
        "token_length": token_length,
        "parse_mode": parse_mode,
        "box_erasing": box_erasing,
        "backbone_weights": str(backbone_weights) if backbone_weights else None,
        "text_encoder": text_encoder,
        "freeze_text_encoder": freeze_text_encoder,
        "select_metric": select_metric,
        "seed": seed,
        "deterministic": deterministic,
        "device": device,
        "precision": precision,
        "num_workers": num_workers,
        "max_steps": max_steps,
        "time_budget": time_budget,
        "tensorboard": tensorboard,
    }
    if resume:
        cfg = load_run_config(output, overrides)
    else:
        from fiacli.core.errors import UsageError

        if data_root is None and config is None:
            raise UsageError("--data-root is required (or a --config that sets data_root)")
        cfg = resolve_config(dataset, config_file=config, overrides=overrides)
        if not cfg.data_root:
            raise UsageError("--data-root is required (or a --config that sets data_root)")
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

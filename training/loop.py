"""The trainer behind ``fiacli train``: one loop for a laptop CPU and for N GPUs under torchrun.

Per optimiser step: ``grad_accum`` micro-batches (DDP all-reduce on the last only), a finite-loss
check, AdamW step, poly-schedule step. Per epoch: the last checkpoint, a validation pass and, when
val improves, the best checkpoint. Everything needed to continue exactly is in ``last.state.pt``.

Ctrl-C, SIGTERM and SIGHUP (a scheduler's preemption, see :mod:`fiacli.core.signals`) save a
resumable checkpoint of the last *completed* step: the interrupted step's forward pass has already
moved BatchNorm statistics and the random streams, so those are put back first, and the commit of
a step (optimiser, schedule, step count) is never cut in half. A run that fails or is interrupted
before its first checkpoint removes what it wrote (config.yaml, logs), so a new attempt starts
clean.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fiacli.core.console import info, warn
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.signals import (
    deferred_signals,
    ignore_terminating_signals,
    set_interrupt_note,
)
from fiacli.training import distributed as dist_utils
from fiacli.training.data_pipeline import RunData, build_run_data, model_inputs
from fiacli.training.optim import (
    build_optimizer,
    freeze_for_training,
    freeze_unused,
    poly_scheduler,
)
from fiacli.training.recipe import TrainConfig, save_config
from fiacli.training.state import (
    ResumableSampler,
    load_state,
    rng_state,
    save_pair,
    seed_everything,
    set_rng_state,
)


@dataclass
class TrainResult:
    """What a run produced (returned on rank 0; other ranks get the same paths)."""

    run_dir: Path
    last: Path | None = None
    best: Path | None = None
    best_metric: float | None = None
    epoch: int = 0
    step: int = 0
    stopped: str = "finished"  # finished | max_steps | time_budget
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA GPUs that support it, else fp16; fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line, per step and per epoch) and, optionally,
    TensorBoard scalars. Only rank 0 writes."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn(
                    "--tensorboard needs the tensorboard package (pip install tensorboard); "
                    "logging to metrics.jsonl only"
                )
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            kind, step = record["kind"], record["step"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Holds model, optimiser, schedule and position; :meth:`fit` runs the epochs."""

    def __init__(self, config: TrainConfig, *, resume: bool = False):
        self.config = config
        check_limits(config)
        from fiacli.core.device import resolve_device

        device = resolve_device(config.device)
        self.dist = dist_utils.setup(device)
        self.device = dist_utils.local_device(device, self.dist)
        self.precision = resolve_precision(config.precision, self.device)
        self.run_dir = Path(config.output)
        self._prepare_run_dir(resume)
        seed_everything(config.seed, deterministic=config.deterministic)

        self.data: RunData = build_run_data(config, self.run_dir, self.dist)
        self.model = self.data.model.to(self.device)
        self.frozen = freeze_for_training(
            self.model, freeze_text_encoder=config.freeze_text_encoder
        )
        self.data.cache_text_features(self.model, self.device)
        if self.dist.enabled:
            # DDP waits for a gradient of every trainable parameter: freeze the dead ones
            probe = model_inputs(self.data.collate([self.data.train[0]]), self.data, self.device)
            self.frozen += freeze_unused(self.model, probe[0], probe[2])
        self.ddp_model = dist_utils.wrap_model(self.model, self.device, self.dist)
        self.optimizer = build_optimizer(
            self.model, config.lr, config.weight_decay, config.no_decay
        )

        per_rank_batches = len(self.data.train) // (self.dist.world_size * config.batch_size)
        self.steps_per_epoch = per_rank_batches // config.grad_accum
        if self.steps_per_epoch < 1:
            raise FiacliError(
                f"the {config.train_split} split has {len(self.data.train)} samples: too few "
                f"for one step of batch {config.batch_size} x grad-accum {config.grad_accum} x "
                f"{self.dist.world_size} process(es)"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = poly_scheduler(self.optimizer, self.total_steps, config.poly_power)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.sampler = ResumableSampler(
            self.data.train,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            seed=config.seed,
        )
        self.epoch = 0  # epochs fully done
        self.step = 0  # optimiser steps done in total
        self.best_metric: float | None = None
        self.history: list[dict[str, Any]] = []
        self.pending_end_of_epoch = False  # interrupted during an epoch's validation and saves
        # after model init (identical on all ranks): per-rank streams for dropout / drop-path
        torch.manual_seed(config.seed + self.dist.rank)
        if resume:
            self._load_resume_state()
        self.log = MetricsLog(
            self.run_dir, enabled=self.dist.is_main, tensorboard=config.tensorboard
        )
        # persistent buffers (BatchNorm statistics): put back if a step is interrupted
        saved = set(self.model.state_dict())
        self._buffers = {n: b for n, b in self.model.named_buffers() if n in saved}
        self._committed: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ run folder and state

    def _prepare_run_dir(self, resume: bool) -> None:
        from fiacli.core.io import refuse_overwriting_inputs

        if not str(self.config.output):
            raise FiacliError("no run folder given; use -o runs/NAME")
        cfg = self.config
        refuse_overwriting_inputs(
            [self.run_dir, *(self.run_dir / name for name in RUN_FILES)],
            [cfg.data_root or None, cfg.backbone_weights or None, _local(cfg.text_encoder)],
        )
        last = self.run_dir / "last.safetensors"
        if resume:
            if not last.is_file():
                raise FiacliError(f"cannot resume: {last} not found")
            return
        if last.exists():
            raise FiacliError(
                f"{self.run_dir} already holds a run; continue it with --resume or choose "
                "another -o"
            )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
        dist_utils.barrier()

    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,  # one entry per rank: dropout streams differ between ranks
            "history": json.dumps(self.history),
            "pending_end_of_epoch": self.pending_end_of_epoch,
        }

    def _load_resume_state(self) -> None:
        from fiacli.models import load_checkpoint

        state = load_state(self.run_dir / "last.state.pt")
        loaded, meta = load_checkpoint(self.run_dir / "last.safetensors")
        if meta.get("provenance", {}).get("save_id") != state.get("save_id"):
            raise FiacliError(
                f"cannot resume: last.safetensors and last.state.pt in {self.run_dir} are from "
                "different saves (interrupted while writing?); start again from best.safetensors"
            )
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise FiacliError(
                f"cannot resume exactly: the run used {state.get('world_size')} process(es), "
                f"this launch has {self.dist.world_size}; resume with the same number"
            )
        self.model.load_state_dict(loaded.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_metric = state["best_metric"]
        self.history = json.loads(state["history"])
        self.pending_end_of_epoch = bool(state.get("pending_end_of_epoch", False))
        set_rng_state(state["rng"][self.dist.rank])
        if self.dist.is_main:
            info(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step}")

    def save(self, name: str, *, with_state: bool, metrics: dict[str, Any] | None = None) -> Path:
        """Write ``<name>.safetensors`` (+ ``.state.pt``) on rank 0; all ranks wait for it."""
        path = self.run_dir / f"{name}.safetensors"
        rngs = dist_utils.all_gather_objects(rng_state()) if with_state else []
        if self.dist.is_main:
            state = self._state(rngs) if with_state else None

            def write(tmp: Path, save_id: str) -> None:
                self.data.save_weights(
                    self.model,
                    tmp,
                    provenance={
                        "save_id": save_id,
                        "epoch": self.epoch,
                        "step": self.step,
                        "val": metrics or {},
                        "config": self.config.to_dict(),
                    },
                )

            save_pair(self.run_dir, name, write, state)
        dist_utils.barrier()
        return path

    # ------------------------------------------------------------------ one step

    def _position(self) -> tuple[int, int]:
        """(epoch index, optimiser steps already done inside it)."""
        return self.step // self.steps_per_epoch, self.step % self.steps_per_epoch

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        micro = self.config.batch_size
        self.sampler.set_position(epoch, start_step * micro * self.config.grad_accum)
        self.data.train.epoch = epoch
        # its own generator: creating a loader never draws from the global RNG (exact resume)
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return DataLoader(
            self.data.train,
            batch_size=micro,
            sampler=self.sampler,
            num_workers=self.config.num_workers,
            collate_fn=self.data.collate,
            drop_last=True,
            generator=generator,
            worker_init_fn=ignore_terminating_signals,  # the main process handles SIGTERM
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> torch.Tensor:
        from fiacli.core.device import autocast

        image, target, text = model_inputs(batch, self.data, self.device)
        with dist_utils.no_sync(self.ddp_model, skip=not sync):
            with autocast(self.device, self.precision):
                logits = self.ddp_model(image, text)
                if not torch.is_tensor(logits):
                    logits = logits.logits
                loss = self.data.loss(logits.float(), target)
            if not torch.isfinite(loss):
                return loss.detach()
            self.scaler.scale(loss / self.config.grad_accum).backward()
        return loss.detach()

    def _optimizer_step(self, batches: list[dict[str, Any]], epoch: int, index: int) -> float:
        losses = []
        for k, batch in enumerate(batches):
            loss = self._micro_step(batch, sync=k == len(batches) - 1)
            losses.append(loss)
        mean = dist_utils.all_reduce_mean(torch.stack(losses).mean())
        if not torch.isfinite(mean):
            ids = [i for b in batches for i in b["ids"]]
            self.optimizer.zero_grad(set_to_none=True)
            last = self.run_dir / "last.safetensors"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
            raise FiacliError(
                f"loss became {mean.item()} at step {self.step + 1} (epoch {epoch + 1}, batch "
                f"{index + 1}, samples {', '.join(map(str, ids[:16]))}); stopped, {kept}"
            )
        with deferred_signals():  # a step is committed whole or not at all
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
        self._commit()
        return float(mean)

    def _commit(self) -> None:
        """Remember the random streams and buffers as they are after the last completed step."""
        self._committed = (rng_state(), {n: b.detach().clone() for n, b in self._buffers.items()})

    def _rewind_to_commit(self) -> None:
        """Undo what an interrupted step did to the buffers and random streams (its gradients
        are never saved), so the checkpoint equals one saved right after the last step."""
        if self._committed is None:
            return
        rngs, buffers = self._committed
        with torch.no_grad():
            for name, value in buffers.items():
                self._buffers[name].copy_(value)
        set_rng_state(rngs)

    # ------------------------------------------------------------------ epochs

    def fit(self) -> TrainResult:
        cfg = self.config
        result = TrainResult(self.run_dir)
        start_time = time.monotonic()
        budget = cfg.time_budget * 60 if cfg.time_budget else None
        self._commit()
        try:
            if self.pending_end_of_epoch:  # interrupted during the last epoch's validation
                self._finish_epoch(self.epoch - 1)
            while self.step < self.total_steps:
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    result.stopped = "max_steps"  # e.g. --resume --max-steps N at step N
                    break
                epoch, done_in_epoch = self._position()
                self.model.train()
                stop = self._run_epoch(epoch, done_in_epoch, start_time, budget, result)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if end_of_epoch:
                    self.epoch = epoch + 1
                    self._finish_epoch(epoch)
                if stop:
                    if not end_of_epoch:
                        self.save("last", with_state=True)
                    break
        except KeyboardInterrupt as exc:
            self._rewind_to_commit()
            if self.step > 0 or self.epoch > 0:
                self.save("last", with_state=True)
                set_interrupt_note(
                    exc,
                    f"saved a resumable checkpoint at step {self.step}: continue with "
                    f"fiacli train -o {self.run_dir} --resume",
                )
            else:
                set_interrupt_note(exc, "no step was completed, nothing was saved")
            raise
        finally:
            self.log.close()
        result.last = self.run_dir / "last.safetensors"
        best = self.run_dir / "best.safetensors"
        result.best = best if best.exists() else None
        result.best_metric, result.epoch, result.step = self.best_metric, self.epoch, self.step
        result.history = self.history
        return result

    def _run_epoch(
        self, epoch: int, done: int, t0: float, budget: float | None, result: TrainResult
    ) -> bool:
        """Train to the end of ``epoch``; True when a step/time limit stopped it early."""
        from rich.progress import TextColumn

        from fiacli.core.console import progress

        cfg = self.config
        loader = self._loader(epoch, done)
        pending: list[dict[str, Any]] = []
        index = done
        tic, tic_step = time.monotonic(), self.step
        window: list[float] = []  # losses since the last log line
        its = 0.0
        bar = progress(TextColumn("{task.fields[status]}"), transient=True)
        bar.disable = bar.disable or not self.dist.is_main
        with bar:
            task = bar.add_task(
                f"epoch {epoch + 1}/{cfg.epochs}",
                total=self.steps_per_epoch,
                completed=done,
                status="",
            )
            for batch in loader:
                pending.append(batch)
                if len(pending) < cfg.grad_accum:
                    continue
                loss = self._optimizer_step(pending, epoch, index)
                pending, index = [], index + 1
                lr = self.optimizer.param_groups[0]["lr"]
                window.append(loss)
                stop = None
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = "max_steps"
                elif budget is not None and time.monotonic() - t0 >= budget:
                    stop = "time_budget"
                # the last steps before a stop are logged too, not left in the window
                if self.step % cfg.log_every == 0 or index == self.steps_per_epoch or stop:
                    now = time.monotonic()
                    its = (self.step - tic_step) / max(now - tic, 1e-9)
                    tic, tic_step = now, self.step
                    self.log.write(
                        {
                            "kind": "step",
                            "epoch": epoch + 1,
                            "step": self.step,
                            "loss": sum(window) / len(window),  # mean since the last line
                            "lr": lr,
                            "it_s": round(its, 3),
                            "time": round(now - t0, 2),
                        }
                    )
                    window = []
                bar.update(task, advance=1, status=f"loss {loss:.4f} lr {lr:.2e} {its:.2f} it/s")
                if stop is not None:
                    result.stopped = stop
                    return True
                if index == self.steps_per_epoch:
                    break
        return False

    def _finish_epoch(self, epoch: int) -> None:
        """Validate and save; an interruption in between is saved as "still to do" so that
        --resume validates this epoch instead of skipping it."""
        self.pending_end_of_epoch = True
        self._end_of_epoch(epoch)
        self.pending_end_of_epoch = False

    def _end_of_epoch(self, epoch: int) -> None:
        from fiacli.training.evaluate import evaluate_split

        metrics: dict[str, Any] = {}
        if self.data.val is not None:
            scores = evaluate_split(
                self.model,
                self.data.val,
                self.data.text_for,
                device=self.device,
                precision=self.precision,
                batch_size=self.config.batch_size,
                num_workers=self.config.num_workers,
                dist=self.dist,
            )
            metrics = {f"val_{k}": v for k, v in scores.overall.items()}
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step, **metrics}
        self.history.append(record)
        self.log.write(record)
        value = metrics.get(f"val_{self.config.select_metric}")
        improved = value is not None and (self.best_metric is None or value > self.best_metric)
        if improved:
            self.best_metric = float(value)
        self.pending_end_of_epoch = False
        self.save("last", with_state=True, metrics=metrics)
        if improved:
            self.save("best", with_state=False, metrics=metrics)
        if self.dist.is_main:
            shown = " ".join(
                f"{k[4:]} {v:.4f}" for k, v in metrics.items() if k in ("val_miou", "val_oiou")
            )
            info(
                f"epoch {epoch + 1}/{self.config.epochs} step {self.step} val {shown}"
                + (" (best)" if improved else "")
            )


# what a run folder holds; none of them may be one of the run's inputs
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "parses.jsonl",
    "last.safetensors",
    "last.state.pt",
    "best.safetensors",
    "tensorboard",
)


def _local(name: str | None) -> str | None:
    """``name`` when it is a local path (a text encoder may also be a hub name)."""
    return name if name and Path(name).expanduser().exists() else None


def check_limits(config: TrainConfig) -> None:
    """--max-steps and --time-budget must allow some training (0 used to train a step)."""
    import math

    if config.max_steps is not None and (
        isinstance(config.max_steps, bool) or int(config.max_steps) < 1
    ):
        raise UsageError(f"--max-steps must be at least 1, not {config.max_steps}")
    budget = config.time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--time-budget must be a positive number of minutes, not {budget}")


def fresh_run_files(run_dir: Path) -> list[Path]:
    """What a new run will create in ``run_dir`` that is not there yet (the folder included),
    so that a start that fails before the first checkpoint can remove exactly that."""
    created = [] if run_dir.exists() else [run_dir]
    return created + [run_dir / name for name in RUN_FILES if not (run_dir / name).exists()]


def _remove_created(paths: list[Path]) -> None:
    import shutil

    for path in reversed(paths):  # files first, the folder last (only if left empty)
        try:
            if path.is_dir() and not path.is_symlink():
                if path.name == "tensorboard":
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.rmdir()
            elif path.exists():
                path.unlink()
        except OSError:
            pass


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Run (or continue) a training run as configured; see ``fiacli train --help``.

    A new run that fails or is interrupted before its first checkpoint leaves no files behind.
    """
    import os

    run_dir = Path(config.output)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    created = fresh_run_files(run_dir) if str(config.output) and not resume and main_rank else []
    try:
        return Trainer(config, resume=resume).fit()
    except BaseException:
        if created and not (run_dir / "last.safetensors").exists():
            _remove_created(created)
        raise
    finally:
        dist_utils.teardown()

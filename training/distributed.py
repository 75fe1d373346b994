"""torch.distributed helpers: ``torchrun --nproc_per_node N -m fiacli train …`` runs DDP.

NCCL on GPUs, gloo on CPU. Rank 0 alone logs, evaluates and writes checkpoints.

BatchNorm with per-rank batches: on CUDA, BatchNorm layers become ``SyncBatchNorm`` so the batch
statistics are those of the global batch, as in single-process training with the same global batch
(the released code does the same). torch's SyncBatchNorm does not run on CPU, so with gloo each
rank normalises with its own batch's statistics: N CPU ranks of batch b then compute exactly what
one process computes with batch b and ``--grad-accum N`` (tests/test_ddp.py checks that).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fiacli.core.errors import FiacliError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); defaults to one process."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise FiacliError(f"bad torchrun environment: {exc}") from exc


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (no-op for a single process)."""
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(minutes=30),
    )
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process under torchrun; CPU stays CPU."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """DDP around ``model`` when distributed (SyncBatchNorm on CUDA); the model itself otherwise.

    ``find_unused_parameters`` stays off: parameters forward never uses are frozen beforehand
    (see :func:`fiacli.training.optim.freeze_for_training`).
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on the micro-steps of a gradient accumulation."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

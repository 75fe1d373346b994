"""Resumable training state: RNG states, the sampler position, and atomic checkpoint pairs.

A run folder holds ``last.safetensors`` (model weights + meta in fiacli's checkpoint format, usable
by ``fiacli eval``/``segment`` as is) and ``last.state.pt`` beside it (optimizer, scheduler, scaler,
RNG states, epoch and step), read back with ``torch.load(weights_only=True)``: only tensors and
plain containers, nothing that could execute code. Both files carry the same ``save_id``, so a pair
torn by a crash between the two renames is detected instead of silently mixing two steps.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from fiacli.core.errors import FiacliError
from fiacli.core.io import is_disk_full, sweep_stale, temporary_name
from fiacli.core.signals import deferred_signals


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (seeded shuffle per epoch, one shard per rank) that can start
    part-way through an epoch, so ``--resume`` sees exactly the samples a straight run would."""

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int, shuffle=True):
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw the permutation for, and how many of this rank's samples to skip."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)


# ---------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as weights_only-loadable data."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# ---------------------------------------------------------------------------- checkpoint pairs


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_pair(
    run_dir: Path,
    name: str,
    write_weights: Callable[[Path, str], None],
    state: dict[str, Any] | None,
) -> Path:
    """Write ``<name>.safetensors`` (via ``write_weights(tmp_path, save_id)``) and, when ``state``
    is given, ``<name>.state.pt``; the previous pair survives any failure before the renames."""
    save_id = uuid.uuid4().hex
    weights = run_dir / f"{name}.safetensors"
    state_path = run_dir / f"{name}.state.pt"
    sweep_stale(run_dir)  # what a run killed while saving (SIGKILL, the OOM killer) left
    tmp_w, tmp_s = temporary_name(weights), temporary_name(state_path)
    had_previous = weights.exists()
    try:
        write_weights(tmp_w, save_id)
        _fsync(tmp_w)
        if state is not None:
            torch.save({**state, "save_id": save_id}, tmp_s)
            _fsync(tmp_s)
        with deferred_signals():  # Ctrl-C or SIGTERM: after both renames, never between
            os.replace(tmp_w, weights)
            if state is not None:
                os.replace(tmp_s, state_path)
    except Exception as exc:  # torch raises RuntimeError, safetensors its own error type
        kept = "the previous checkpoint is unchanged" if had_previous else "nothing was saved"
        if is_disk_full(exc) or "disk full" in str(exc):
            raise FiacliError(f"disk full while saving {weights}; {kept}") from exc
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FiacliError):
            raise FiacliError(f"could not save {weights}: {detail}") from exc
        raise FiacliError(
            f"could not save {weights} (is the disk full, or over a file-size limit?): {detail}; "
            f"{kept}"
        ) from exc
    finally:
        for tmp in (tmp_w, tmp_s):
            tmp.unlink(missing_ok=True)
    return weights


def load_state(path: Path) -> dict[str, Any]:
    """Read a ``*.state.pt`` file safely (tensors and plain containers only)."""
    if not path.is_file():
        raise FiacliError(f"cannot resume: {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or tampered file
        raise FiacliError(
            f"cannot resume: {path} is not a readable training state ({exc})"
        ) from exc

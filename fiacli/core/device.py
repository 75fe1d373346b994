"""Device and precision selection: one place for the few CUDA-only branches."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, get_args

from fiacli.core.errors import FiacliError

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]  # and cuda:N
DEVICES: tuple[str, ...] = get_args(DeviceName)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FiacliError("--device cuda was asked for, but no CUDA GPU is available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise FiacliError(f"unknown device {name!r}; use {', '.join(DEVICES)} or cuda:N")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (and bf16 on CPU); fp32 is a no-op context."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise FiacliError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision == "fp16":
        raise FiacliError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])

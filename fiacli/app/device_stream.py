"""The model stage on an accelerator: chips staged ahead, blending and thresholding on the device.

On CUDA the model thread owns the device and keeps it busy: each batch of chips is copied into
pinned host memory and sent to the device on a side stream (:class:`Stager`) while the previous
batch still runs; the probabilities never come back as float32 maps: :class:`TorchBlender` blends
them on the device (the same float32 operations, in the same order, as
:class:`fiacli.geo.tiling.RowBlender`, so the result is the same bit for bit), and the final rows
come back as uint8 mask and 0-255 probability rows (:class:`DeviceRows`), copied without
blocking and waited for by the writing thread. Everything here also runs on CPU tensors (that is
how it is tested); only the pinned memory, the side stream and the events are CUDA-only.

``--batch-size auto`` (:func:`fit_batch_size`): the peak memory of a forward pass at batch 1 and
2 gives the memory per chip; the largest batch whose peak fits in :data:`HEADROOM` of what the
device has free (plus what torch already holds in its cache) is chosen, at most
:data:`MAX_AUTO_BATCH`. A CUDA out-of-memory error later still halves it once (the pipeline).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fiacli.geo.tiling import ChipGrid, RowBlender

HEADROOM = 0.8  # share of the free device memory a batch may use (the rest: blending, cache)
MAX_AUTO_BATCH = 64  # past this, batches gain nothing on a 480² chip and delay the first rows


def fit_batch_size(peak_1: int, peak_2: int, capacity: int, *, headroom: float = HEADROOM,
                   limit: int = MAX_AUTO_BATCH) -> int:  # fmt: skip
    """Largest batch ``b`` with ``peak_1 + (b - 1) * (peak_2 - peak_1) <= headroom * capacity``
    (peaks and capacity in bytes; at least 1, at most ``limit``; multiples of 4 past 8)."""
    per_chip = max(peak_2 - peak_1, 1)
    b = 1 + int((headroom * capacity - peak_1) // per_chip)
    b = max(1, min(limit, b))
    return b - b % 4 if b >= 8 else b


def measure_batch_size(predictor: Any, chip: int, encoded: Any) -> int:
    """``--batch-size auto`` on a CUDA device: probe the forward pass at batch 1 and 2."""
    device = predictor.device
    peaks = []
    for b in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        chips = torch.zeros((b, 3, chip, chip), dtype=torch.uint8, device=device)
        predictor.predict_tensor(chips, encoded)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
    free, _ = torch.cuda.mem_get_info(device)
    held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    capacity = free + held + torch.cuda.memory_allocated(device)
    return fit_batch_size(peaks[0], peaks[1], capacity)


class Stager:
    """Chips (numpy uint8) onto the device: pinned memory, a non-blocking copy on a side stream
    that the compute stream waits for, so the next batch travels while the current one runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(pixels))
        if not self.cuda:
            return host.to(self.device)
        host = host.pin_memory()
        with torch.cuda.stream(self.stream):
            chips = host.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        chips.record_stream(compute)
        return chips


class TorchBlender(RowBlender):
    """:class:`RowBlender` on device tensors: same runs, same float32 weights, same order."""

    def __init__(self, grid: ChipGrid, bands: int, blend: Any, device: torch.device) -> None:
        super().__init__(grid, bands, blend)
        self.device = device
        self.acc = torch.zeros((bands, grid.chip_h, grid.width), dtype=torch.float32,
                               device=device)  # fmt: skip
        self._scratch = torch.empty(grid.chip_h * grid.chip_w, dtype=torch.float32,
                                    device=device)  # fmt: skip
        self._w2d_t: dict[tuple[int, int], torch.Tensor] = {}

    def _weights(self, row: int, col: int) -> torch.Tensor:
        key = (self._wkey_y[row], self._wkey_x[col])
        if key not in self._w2d_t:
            self._w2d_t[key] = torch.from_numpy(super()._weights(row, col)).to(self.device)
        return self._w2d_t[key]

    def _madd(self, dst: Any, src: Any, w: Any) -> None:
        h, w_ = dst.shape
        tmp = self._scratch[: h * w_].view(h, w_)
        torch.mul(src, w, out=tmp)  # two kernels, each rounding to float32: no FMA
        dst.add_(tmp)


def finite_unit(p: torch.Tensor) -> torch.Tensor:
    """NaN -> 0, then clipped to [0, 1]: what the numpy path does (a no-op on valid maps)."""
    return torch.nan_to_num(p.float(), nan=0.0).clamp(0.0, 1.0)  # new tensors: the model's
    # maps may be inference tensors, which cannot be changed in place


class DeviceRows:
    """Final rows on the device -> uint8 mask (and 0-255 probability) rows on the host."""

    def __init__(self, threshold: float, need_prob: bool, device: torch.device) -> None:
        self.threshold, self.need_prob, self.device = threshold, need_prob, device
        self.cuda = device.type == "cuda"

    def __call__(self, rows: torch.Tensor) -> tuple[Any, Any, Any]:
        """Start the copy of ``rows`` (bands, n, width) float32; returns (mask, prob or None,
        event): the host tensors are complete once ``event`` (None on CPU) has completed."""
        mask = torch.gt(rows, self.threshold).to(torch.uint8)
        prob = None
        if self.need_prob:
            prob = torch.round(rows.mul(255)).to(torch.uint8)  # round half to even, as np.rint
        if not self.cuda:
            return mask.numpy(), None if prob is None else prob.numpy(), None
        host_mask = torch.empty(mask.shape, dtype=torch.uint8, pin_memory=True)
        host_mask.copy_(mask, non_blocking=True)
        host_prob = None
        if prob is not None:
            host_prob = torch.empty(prob.shape, dtype=torch.uint8, pin_memory=True)
            host_prob.copy_(prob, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host_mask, host_prob, event

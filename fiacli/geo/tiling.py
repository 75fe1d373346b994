"""Chip grid, blend weights and the row-streaming stitcher behind ``fiacli segment``.

The grid covers the scene with ``chip x chip`` windows ``chip - overlap`` apart; the last chip of
each row and column is shifted back so that it ends on the scene edge (a model never sees padding
except in scenes smaller than one chip). Weights are separable (row weight x column weight) and
normalised per axis, so the blended probability ``sum(w * p)`` needs no running weight sum and
equals ``sum(w * p) / sum(w)`` exactly. The stitcher holds one chip row of the scene: as soon as
the last chip of a chip row is added, the rows no later chip can touch are final and handed out.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from fiacli.core.errors import UsageError
from fiacli.geo.raster import FILL_RGB

if TYPE_CHECKING:
    from fiacli.geo.raster import Scene

Blend = Literal["cosine", "crop", "none"]
BLENDS: tuple[str, ...] = get_args(Blend)
READ_CHIPS = 16  # chips of a row read in one call (see ChipReader._block)


def axis_offsets(length: int, chip: int, overlap: int) -> np.ndarray:
    """Start of each chip along one axis; the last one is shifted back to end on the edge."""
    if length <= chip:
        return np.zeros(1, np.int64)
    stride = chip - overlap
    n = -(-(length - chip) // stride) + 1  # ceil
    offsets = np.arange(n, dtype=np.int64) * stride
    offsets[-1] = length - chip
    return offsets


def _ramp(n: int) -> np.ndarray:
    """Rising half-cosine over ``n`` pixels, strictly inside (0, 1): ``ramp + ramp[::-1] == 1``."""
    return (np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float64)


def axis_weights(length: int, chip: int, offsets: np.ndarray, blend: Blend) -> list[np.ndarray]:
    """Normalised weight of each chip along one axis: at every position they sum to 1.

    ``cosine`` fades each chip out over its whole overlap with a neighbour (never at the scene
    edge); ``crop`` gives each pixel to the chip whose centre is nearest, cutting in the middle of
    the overlap; ``none`` averages all chips equally.
    """
    size = min(chip, length)
    raw: list[np.ndarray] = []
    n = len(offsets)
    for i, o in enumerate(offsets):
        w = np.ones(size)
        if blend == "cosine":
            if i > 0:
                r = min(int(offsets[i - 1] + chip - o), size // 2)
                w[:r] *= _ramp(r)
            if i < n - 1:
                r = min(int(o + chip - offsets[i + 1]), size // 2)
                w[size - r :] *= _ramp(r)[::-1]
        elif blend == "crop":
            lo = 0 if i == 0 else (int(offsets[i - 1]) + chip + int(o)) // 2 - int(o)
            hi = size if i == n - 1 else (int(o) + chip + int(offsets[i + 1])) // 2 - int(o)
            w[:] = 0
            w[lo:hi] = 1
        elif blend != "none":
            raise UsageError(f"unknown blend {blend!r}; use cosine, crop or none")
        raw.append(w)
    total = np.zeros(length)
    for o, w in zip(offsets, raw, strict=True):
        total[o : o + size] += w
    return [(w / total[o : o + size]).astype(np.float32) for o, w in zip(offsets, raw, strict=True)]


@dataclass(frozen=True)
class ChipWindow:
    """One chip: grid position, top-left pixel, and its size inside the scene."""

    row: int
    col: int
    y: int
    x: int
    height: int
    width: int


class ChipGrid:
    """Row-major chips over a ``height x width`` scene."""

    def __init__(self, height: int, width: int, chip: int, overlap: int) -> None:
        if chip < 16:
            raise UsageError(f"--chip must be at least 16 pixels, not {chip}")
        if not 0 <= overlap < chip:
            raise UsageError(f"--overlap must be between 0 and chip-1 ({chip - 1}), not {overlap}")
        self.height, self.width, self.chip, self.overlap = height, width, chip, overlap
        self.ys = axis_offsets(height, chip, overlap)
        self.xs = axis_offsets(width, chip, overlap)
        self.chip_h = min(chip, height)
        self.chip_w = min(chip, width)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def __iter__(self) -> Iterator[ChipWindow]:
        for r, y in enumerate(self.ys):
            for c, x in enumerate(self.xs):
                yield ChipWindow(r, c, int(y), int(x), self.chip_h, self.chip_w)

    def row_end(self, row: int) -> int:
        """First scene row that chip rows after ``row`` still cover (rows above it are final)."""
        return self.height if row == len(self.ys) - 1 else int(self.ys[row + 1])


class RowStitcher:
    """Blends chip probabilities into scene rows, holding only one chip row of the scene.

    Memory: ``bands x chip x width`` float32 (float16 would halve it but adds a rounding before
    the uint8 output, so crop blending would no longer be exact). Pixels no chip marked valid
    stay NaN (nodata).
    """

    def __init__(self, grid: ChipGrid, bands: int, blend: Blend = "cosine",
                 dtype: type = np.float32) -> None:  # fmt: skip
        self.grid, self.bands = grid, bands
        self.wy = axis_weights(grid.height, grid.chip, grid.ys, blend)
        self.wx = axis_weights(grid.width, grid.chip, grid.xs, blend)
        self.acc = np.full((bands, grid.chip_h, grid.width), np.nan, dtype)
        self.top = 0  # scene row of acc[:, 0]
        self._shift = 0  # rows handed out by the last add(), dropped at the next one
        self._next = (0, 0)  # chips must come in row-major order

    def add(
        self, chip: ChipWindow, probs: np.ndarray | None, valid: np.ndarray
    ) -> tuple[int, np.ndarray] | None:
        """Blend one chip; ``probs`` (bands, h, w) in [0, 1], None when no pixel is valid.

        Returns ``(first_row, rows)`` when this chip completes a chip row: ``rows`` (bands, n,
        width) is a view that stays valid until the next call (the caller may overwrite it);
        NaN marks nodata.
        """
        if (chip.row, chip.col) != self._next:
            raise ValueError(f"chip {chip.row},{chip.col} out of order; expected {self._next}")
        if self._shift:  # drop the rows handed out; copy in non-overlapping runs (no temporary)
            keep, n = self.acc.shape[1] - self._shift, self._shift
            for a in range(0, keep, n):
                b = min(a + n, keep)
                self.acc[:, a:b] = self.acc[:, a + n : b + n]
            self.acc[:, keep:] = np.nan
            self.top += self._shift
            self._shift = 0
        if probs is not None and valid.any():
            y = chip.y - self.top
            sub = self.acc[:, y : y + chip.height, chip.x : chip.x + chip.width]
            w = self.wy[chip.row][:, None] * self.wx[chip.col][None, :]
            np.nan_to_num(sub, copy=False, nan=0.0)
            sub += probs * w
            if not valid.all():
                sub[:, ~valid] = np.nan
        last_col = chip.col == len(self.grid.xs) - 1
        self._next = (chip.row + 1, 0) if last_col else (chip.row, chip.col + 1)
        if not last_col:
            return None
        end = self.grid.row_end(chip.row)
        self._shift = end - self.top
        return self.top, self.acc[:, : self._shift]


@dataclass
class _Batch:
    chips: list[ChipWindow]
    valid: list[np.ndarray]
    slot: list[int]  # row of ``pixels`` for each chip, -1 when it holds no valid pixel
    pixels: np.ndarray  # (n, 3, chip, chip) uint8


class ChipReader:
    """Reads and batches chips on a background thread, a few batches ahead of the model."""

    def __init__(self, scene: Scene, grid: ChipGrid, batch_size: int, depth: int = 3) -> None:
        self.scene, self.grid, self.batch_size = scene, grid, batch_size
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.read_seconds = 0.0
        self.wait_seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="fiacli-chip-reader", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _batch(self, chips: list[ChipWindow], data: list[tuple[np.ndarray, np.ndarray]]) -> _Batch:
        c = self.grid.chip
        n = sum(1 for _, v in data if v.any())
        pixels = np.empty((n, 3, c, c), np.uint8)
        slots, k = [], 0
        for rgb, valid in data:
            if not valid.any():
                slots.append(-1)
                continue
            h, w = valid.shape
            if h < c or w < c:  # scene smaller than a chip: pad right/bottom
                pixels[k] = np.asarray(FILL_RGB, np.uint8)[:, None, None]
            pixels[k, :, :h, :w] = rgb
            slots.append(k)
            k += 1
        return _Batch(chips, [v for _, v in data], slots, pixels)

    def _block(self, chip: ChipWindow) -> Any:
        """The window of ``chip`` and the next ``READ_CHIPS - 1`` chips of its row: one read
        for several chips decodes their overlaps once and pays the per-call cost once, while
        memory stays bounded whatever the scene's width."""
        from rasterio.windows import Window

        stride = self.grid.chip - self.grid.overlap
        right = min(self.grid.width, chip.x + chip.width + (READ_CHIPS - 1) * stride)
        return Window(chip.x, chip.y, right - chip.x, chip.height)

    def _run(self) -> None:
        from rasterio.windows import Window

        try:
            chips: list[ChipWindow] = []
            data: list[tuple[np.ndarray, np.ndarray]] = []
            n_valid = 0
            block = Window(0, 0, 0, 0)  # the piece of the scene in hand
            for chip in self.grid:
                if self.stop.is_set():
                    return
                if (chip.y, chip.height) != (block.row_off, block.height) or (
                    chip.x + chip.width > block.col_off + block.width
                ):
                    t0 = time.perf_counter()
                    block = self._block(chip)
                    pixels, pixels_valid = self.scene.read(block)
                    self.read_seconds += time.perf_counter() - t0
                cols = slice(chip.x - block.col_off, chip.x - block.col_off + chip.width)
                rgb, valid = pixels[:, :, cols], pixels_valid[:, cols].copy()
                chips.append(chip)
                data.append((rgb, valid))
                n_valid += bool(valid.any())
                if n_valid >= self.batch_size:
                    if not self._put(self._batch(chips, data)):
                        return
                    chips, data, n_valid = [], [], 0
            if chips and not self._put(self._batch(chips, data)):
                return
            self._put(None)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self._put(exc)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            t0 = time.perf_counter()
            item = self.queue.get()
            self.wait_seconds += time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __enter__(self) -> ChipReader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fiacli.core.errors import FiacliError, UsageError
from fiacli.geo.choices import Blend
from fiacli.geo.raster import FILL_RGB

if TYPE_CHECKING:
    from fiacli.geo.raster import Scene

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


# How RowBlender treats a run of positions of one chip along one axis (see _axis_runs).
_SKIP, _COPY, _MADD = 0, 1, 2


def _axis_runs(weights: list[np.ndarray], offsets: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """Per chip along one axis: runs ``(start, stop, kind)`` of its positions.

    ``_SKIP``: its weight is 0 (it adds exactly +0). ``_COPY``: its weight is 1 and no other chip
    has a nonzero weight there (the blend is exactly its value). ``_MADD``: anything else.
    """
    size = len(weights[0])
    length = int(offsets[-1]) + size
    covering = np.zeros(length, np.int64)
    for o, w in zip(offsets, weights, strict=True):
        covering[o : o + size] += w != 0
    out = []
    for o, w in zip(offsets, weights, strict=True):
        kind = np.full(size, _MADD, np.int8)
        kind[(w == 1) & (covering[o : o + size] == 1)] = _COPY
        kind[w == 0] = _SKIP
        edges = np.flatnonzero(np.diff(kind)) + 1
        starts = [0, *edges.tolist()]
        stops = [*edges.tolist(), size]
        out.append([(a, b, int(kind[a])) for a, b in zip(starts, stops, strict=True)])
    return out


class RowBlender:
    """:class:`RowStitcher`'s blend, bit for bit, at a fraction of the cost.

    Every pixel gets the same float32 operations in the same order (``0 + p1*w1 + p2*w2 …`` over
    the chips covering it, row-major), but a pixel only one chip covers is a copy, a chip with
    zero weight somewhere (``crop``) adds nothing there, and the weight products are computed
    once per kind of chip. Validity travels beside the values (a pixel is valid in every chip
    that covers it or in none), not as NaN, so no NaN is ever converted back; its rows are
    only allocated once a chip has an invalid pixel (most scenes have none).
    """

    def __init__(self, grid: ChipGrid, bands: int, blend: Blend = "cosine") -> None:
        self.grid, self.bands = grid, bands
        self.wy = axis_weights(grid.height, grid.chip, grid.ys, blend)
        self.wx = axis_weights(grid.width, grid.chip, grid.xs, blend)
        self.runs_y = _axis_runs(self.wy, grid.ys)
        self.runs_x = _axis_runs(self.wx, grid.xs)
        self._wkey_y = self._classes(self.wy)
        self._wkey_x = self._classes(self.wx)
        self._w2d: dict[tuple[int, int], np.ndarray] = {}
        self.acc = np.zeros((bands, grid.chip_h, grid.width), np.float32)
        self.valid: np.ndarray | None = None  # None: every pixel so far is valid
        self._all_valid = np.broadcast_to(np.True_, (grid.chip_h, grid.width))  # no memory
        self.rows_valid = np.ones(grid.chip_h, bool)  # False: the row holds an invalid pixel
        self._scratch = np.empty(grid.chip_h * grid.chip_w, np.float32)
        self.top = 0
        self._shift = 0
        self._next = (0, 0)

    @staticmethod
    def _classes(weights: list[np.ndarray]) -> list[int]:
        seen: dict[bytes, int] = {}
        return [seen.setdefault(w.tobytes(), len(seen)) for w in weights]

    def _weights(self, row: int, col: int) -> np.ndarray:
        key = (self._wkey_y[row], self._wkey_x[col])
        if key not in self._w2d:  # exactly RowStitcher's w: a float32 outer product
            self._w2d[key] = self.wy[row][:, None] * self.wx[col][None, :]
        return self._w2d[key]

    def _madd(self, dst: Any, src: Any, w: Any) -> None:
        """``dst += src * w``: a float32 product, then a float32 sum (no fused multiply-add)."""
        h, w_ = dst.shape
        tmp = self._scratch[: h * w_].reshape(h, w_)
        np.multiply(src, w, out=tmp)
        np.add(dst, tmp, out=dst)

    def _drop_handed_out(self) -> None:
        keep, n = self.acc.shape[1] - self._shift, self._shift
        for a in range(0, keep, n):  # non-overlapping runs: no temporary
            b = min(a + n, keep)
            self.acc[:, a:b] = self.acc[:, a + n : b + n]
            if self.valid is not None:
                self.valid[a:b] = self.valid[a + n : b + n]
        self.acc[:, keep:] = 0
        if self.valid is not None:
            self.valid[keep:] = True
        self.rows_valid[:keep] = self.rows_valid[n:]
        self.rows_valid[keep:] = True
        self.top += self._shift
        self._shift = 0

    def add(
        self,
        chip: ChipWindow,
        probs: list[np.ndarray | None] | None,
        valid: np.ndarray,
        all_valid: bool = False,
    ) -> tuple[int, np.ndarray, np.ndarray, bool] | None:
        """Blend one chip. ``probs``: per band a finite ``(h, w)`` float32 map in [0, 1] (at
        least chip-sized; None: nothing to add, as for a map of zeros), or None for a chip
        without valid pixels. ``valid``: the chip's ``(h, w)`` validity (``all_valid``: it is
        all True, so it needs no copy).

        Returns ``(first_row, rows, valid, all_valid)`` when the chip completes a chip row:
        ``rows`` (bands, n, width) and ``valid`` (n, width) are views that stay valid until the
        next call (the caller may overwrite ``rows``).
        """
        if (chip.row, chip.col) != self._next:
            raise ValueError(f"chip {chip.row},{chip.col} out of order; expected {self._next}")
        if self._shift:
            self._drop_handed_out()
        y = chip.y - self.top
        ys, xs = slice(y, y + chip.height), slice(chip.x, chip.x + chip.width)
        if probs is None or not all_valid:
            if self.valid is None:
                self.valid = np.ones((self.grid.chip_h, self.grid.width), bool)
            self.valid[ys, xs] = False if probs is None else valid
            self.rows_valid[ys] &= False if probs is None else valid.all(axis=1)
        if probs is not None:
            w2d = None
            for band, p in enumerate(probs):
                if p is None:
                    continue
                acc = self.acc[band]
                for ya, yb, ky in self.runs_y[chip.row]:
                    for xa, xb, kx in self.runs_x[chip.col]:
                        if ky == _SKIP or kx == _SKIP:
                            continue
                        dst = acc[y + ya : y + yb, chip.x + xa : chip.x + xb]
                        src = p[ya:yb, xa:xb]
                        if ky == _COPY and kx == _COPY:
                            dst[...] = src
                            continue
                        if w2d is None:
                            w2d = self._weights(chip.row, chip.col)
                        self._madd(dst, src, w2d[ya:yb, xa:xb])
        last_col = chip.col == len(self.grid.xs) - 1
        self._next = (chip.row + 1, 0) if last_col else (chip.row, chip.col + 1)
        if not last_col:
            return None
        self._shift = self.grid.row_end(chip.row) - self.top
        n = self._shift
        valid = self._all_valid if self.valid is None else self.valid
        return self.top, self.acc[:, :n], valid[:n], bool(self.rows_valid[:n].all())


class ChipReadError(FiacliError, OSError):
    """A window of the scene could not be read; the message names it and its chips."""


class _Buffers:
    """uint8 arrays given back for reuse, a few of each shape (thread-safe): fresh memory
    costs a page fault per 4 KiB, a third of the near-free pipeline's CPU time, more than the
    copy into a reused array."""

    def __init__(self, per_shape: int = 2) -> None:
        self.per_shape = per_shape
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, ...], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """One given back with this shape, or a new (uninitialised) array."""
        with self._lock:
            kept = self._kept.get(shape)
            if kept:
                return kept.pop()
        return np.empty(shape, np.uint8)

    def give(self, array: np.ndarray) -> None:
        """``array`` is no longer used: keep it for a later :meth:`take` (views never are)."""
        if array.base is not None or array.dtype != np.uint8:
            return
        with self._lock:
            kept = self._kept.setdefault(array.shape, [])
            if len(kept) < self.per_shape:
                kept.append(array)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


@dataclass
class _Batch:
    chips: list[ChipWindow]
    valid: list[np.ndarray]
    slot: list[int]  # row of ``pixels`` for each chip, -1 when it holds no valid pixel
    pixels: np.ndarray  # (n, 3, chip, chip) uint8
    all_valid: list[bool] = field(default_factory=list)  # chip k's validity is all True


@dataclass(frozen=True)
class ReadUnit:
    """One read of the scene: a window, and the last chip (row-major index) that needs it."""

    y: int
    x: int
    height: int
    width: int
    last_chip: int

    @property
    def window(self) -> Any:
        from rasterio.windows import Window

        return Window(self.x, self.y, self.width, self.height)


class ReadPlan:
    """Which windows of the scene are read, in which order, and which chips each one serves.

    ``blocks``: the scene's own blocks (tiles or strips) grouped into windows of whole blocks,
    about :data:`UNIT_COLUMNS` wide: every block is decoded exactly once by exactly one reader
    thread (no two threads share GDAL's block cache, so a block two reads touch would be decoded
    twice), chips are cut from the one to four windows they overlap, and a window is dropped
    after its last chip. ``chips``: a window per :data:`READ_CHIPS` chips of a chip row (for
    datasets whose pixels may depend on the window, like a WarpedVRT, and scenes without block
    information): each chip lies inside one window.
    """

    def __init__(self, grid: ChipGrid, block: tuple[int, int] | None) -> None:
        # windows of whole blocks, about a chip tall (memory) and UNIT_COLUMNS wide
        self.grid = grid
        self.kind = "chips" if block is None else "blocks"
        self.units: list[ReadUnit] = []
        self.chip_units: list[tuple[int, ...]] = []
        if block is None:
            self._chip_blocks()
        else:
            self._scene_blocks(*block)
        self.live = self._most_live()

    def _chip_blocks(self) -> None:
        g = self.grid
        stride = g.chip - g.overlap
        spans: list[list[int]] = []  # y, x, height, width, last chip
        for k, chip in enumerate(g):
            last = spans[-1] if spans else None
            if (
                last is None
                or (chip.y, chip.height) != (last[0], last[2])
                or chip.x + chip.width > last[1] + last[3]
            ):
                right = min(g.width, chip.x + chip.width + (READ_CHIPS - 1) * stride)
                spans.append([chip.y, chip.x, chip.height, right - chip.x, k])
            spans[-1][4] = k
            self.chip_units.append((len(spans) - 1,))
        self.units = [ReadUnit(*s) for s in spans]

    def _scene_blocks(self, bh: int, bw: int) -> None:
        g = self.grid
        uh = _unit_extent(bh, g.height, max(g.chip, MIN_UNIT_ROWS))
        uw = _unit_extent(bw, g.width, UNIT_COLUMNS)
        index: dict[tuple[int, int], int] = {}
        spans: list[list[int]] = []
        for k, chip in enumerate(g):
            needed = []
            for r in range(chip.y // uh, (chip.y + chip.height - 1) // uh + 1):
                for c in range(chip.x // uw, (chip.x + chip.width - 1) // uw + 1):
                    if (r, c) not in index:
                        index[(r, c)] = len(spans)
                        y, x = r * uh, c * uw
                        spans.append([y, x, min(uh, g.height - y), min(uw, g.width - x), k])
                    u = index[(r, c)]
                    spans[u][4] = k
                    needed.append(u)
            self.chip_units.append(tuple(needed))
        self.units = [ReadUnit(*s) for s in spans]

    def _most_live(self) -> int:
        """The most windows needed at once (decoded in order, dropped after their last chip)."""
        n = len(self.chip_units)
        delta = np.zeros(n + 1, np.int64)
        first: dict[int, int] = {}
        for k, units in enumerate(self.chip_units):
            for u in units:
                first.setdefault(u, k)
        for u, k in first.items():
            delta[k] += 1
            delta[self.units[u].last_chip + 1] -= 1
        return int(np.cumsum(delta).max()) if n else 0


MIN_UNIT_ROWS = 64  # windows of whole blocks: about a chip tall, at least this many rows
UNIT_COLUMNS = 2048  # and about this many columns (bounded memory on wide scenes)


def _unit_extent(block: int, length: int, target: int) -> int:
    """A multiple of ``block`` near ``target`` (``length`` when the block spans the scene; the
    target itself when the block is huge, as in a scene stored as one strip)."""
    huge = block > max(2 * target, 2048)  # e.g. a scene stored as one strip: do not read it all
    if block >= length:
        return target if huge and target < length else length
    if huge:
        return target
    return block * max(1, round(target / block))


def _block_shape(scene: Any) -> tuple[int, int] | None:
    """The scene's own block shape when reads of whole blocks are exact, else None."""
    dataset = getattr(scene, "dataset", None)
    if dataset is None or dataset is not getattr(scene, "src", None):  # a WarpedVRT: no
        return None
    indexes = getattr(scene, "indexes", None) or (1,)
    try:
        bh, bw = dataset.block_shapes[indexes[0] - 1]
    except (AttributeError, IndexError, TypeError):
        return None
    return int(bh), int(bw)


class ChipReader:
    """Reads the scene and hands out batches of chips, in chip order, a few batches ahead.

    ``threads`` reader threads (each with its own handle on the scene: GDAL releases the GIL
    while it decodes) read the windows of a :class:`ReadPlan`; a batching thread cuts chips from
    them in order and groups them into batches of ``batch_size`` chips with data. At most
    ``plan.live + 1`` windows and ``depth`` batches are in memory at once. ``threads=0``
    does all of it on the consuming thread, one window after the other (the serial reference).
    Batches are the same whatever the number of threads.
    """

    def __init__(self, scene: Scene, grid: ChipGrid, batch_size: int, depth: int = 3, *,
                 threads: int = 1, flow: Any = None) -> None:  # fmt: skip
        from fiacli.geo.flow import Flow

        self.scene, self.grid, self.batch_size, self.depth = scene, grid, batch_size, depth
        self.threads = threads
        self.plan = ReadPlan(grid, _block_shape(scene))
        self.flow = Flow() if flow is None else flow
        self.read_clock = self.flow.clock("read", max(threads, 1))
        self.batch_clock = self.flow.clock("batch")
        self.wait_seconds = 0.0
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        # batch buffers the consumer gave back, and decoded windows after their last chip
        self._buffers = _Buffers()
        self._reads_into = bool(getattr(scene, "reads_into", False))
        self.stop = self.flow.stop
        self._scenes: list[Any] = []
        self._clones: list[Any] = []
        self._done: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
        self._cond = threading.Condition()
        self._taken = 0  # next window index a reader thread takes
        # windows decoded and not yet dropped, at most: the live set, plus one read ahead
        # when that set spans several windows a row (wide scenes; 6% faster at 10,240 px)
        self._permits = self.plan.live + (self.plan.live > 2)
        self.thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._freed = 0
        self._all_true = np.ones((grid.chip_h, grid.chip_w), bool)
        self._all_true.flags.writeable = False

    @property
    def read_seconds(self) -> float:
        return self.read_clock.busy_s

    # -- reading windows -----------------------------------------------------------------------

    def _decode(self, scene: Any, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        unit = self.plan.units[index]
        t0 = time.perf_counter()
        out = self._buffers.take((3, unit.height, unit.width)) if self._reads_into else None
        try:
            rgb, valid = scene.read(unit.window) if out is None else scene.read(unit.window, out)
        except Exception as exc:
            raise self._read_error(index, exc) from exc
        all_valid = bool(valid.all())
        result = rgb, (None if all_valid else valid), all_valid  # all True: keep no copy
        self.read_clock.add(busy=time.perf_counter() - t0, items=1)
        return result

    def _read_error(self, index: int, exc: BaseException) -> ChipReadError:
        unit = self.plan.units[index]
        chips = [k for k, us in enumerate(self.plan.chip_units) if index in us]
        names = list(self.grid)
        first, last = names[chips[0]], names[chips[-1]]
        which = f"chip {first.row},{first.col}" if len(chips) == 1 else (
            f"chips {first.row},{first.col} to {last.row},{last.col}")  # fmt: skip
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FiacliError):  # it names the file and the window already
            return ChipReadError(f"{detail} ({which})")
        path = getattr(self.scene, "path", "the scene")
        return ChipReadError(
            f"cannot read {path} at rows {unit.y}-{unit.y + unit.height - 1}, columns "
            f"{unit.x}-{unit.x + unit.width - 1} ({which}): {detail}"
        )

    def _reader(self, scene: Any) -> None:
        n = len(self.plan.units)
        while True:
            with self._cond:
                t0 = time.perf_counter()
                while self._taken < n and self._taken - self._freed >= self._permits:
                    self.flow.check()
                    self._cond.wait(0.05)
                self.read_clock.add(wait_out=time.perf_counter() - t0)
                if self._taken >= n:
                    return
                index = self._taken
                self._taken += 1
            self.flow.check()
            result = self._decode(scene, index)
            with self._cond:
                self._done[index] = result
                self._cond.notify_all()

    def _unit(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        if self.threads == 0:  # serial: windows are asked for in order
            if index not in self._done:
                self._done[index] = self._decode(self.scene, index)
            return self._done[index]
        with self._cond:
            t0 = time.perf_counter()
            while index not in self._done:
                self.flow.check()
                self._cond.wait(0.05)
            self.batch_clock.add(wait_in=time.perf_counter() - t0)
            return self._done[index]

    def _drop(self, index: int) -> None:
        with self._cond:
            rgb = self._done.pop(index)[0]
            if self._reads_into:  # a reader takes it at once: no more windows in memory
                self._buffers.give(rgb)
            self._freed += 1
            self._cond.notify_all()

    # -- batching ------------------------------------------------------------------------------

    def _batches(self) -> Iterator[_Batch]:
        """Chips in order, cut from their windows, grouped into batches."""
        c, plan = self.grid.chip, self.plan
        fill = np.asarray(FILL_RGB, np.uint8)[:, None, None]
        pixels = np.empty((self.batch_size, 3, c, c), np.uint8)
        chips: list[ChipWindow] = []
        valids: list[np.ndarray] = []
        slots: list[int] = []
        flags: list[bool] = []
        n_valid = 0
        for k, chip in enumerate(self.grid):
            units = [(plan.units[u], *self._unit(u)) for u in plan.chip_units[k]]
            t0 = time.perf_counter()
            pieces = []
            for unit, rgb, uvalid, _ in units:
                y0, y1 = max(chip.y, unit.y), min(chip.y + chip.height, unit.y + unit.height)
                x0, x1 = max(chip.x, unit.x), min(chip.x + chip.width, unit.x + unit.width)
                src = (slice(y0 - unit.y, y1 - unit.y), slice(x0 - unit.x, x1 - unit.x))
                dst = (slice(y0 - chip.y, y1 - chip.y), slice(x0 - chip.x, x1 - chip.x))
                pieces.append((rgb, uvalid, src, dst))
            all_valid = all(flag for *_, flag in units)
            if all_valid:
                valid = self._all_true[: chip.height, : chip.width]
            else:
                valid = np.empty((chip.height, chip.width), bool)
                for _, uvalid, src, dst in pieces:
                    valid[dst] = True if uvalid is None else uvalid[src]
            has_data = all_valid or bool(valid.any())
            if has_data:
                slot = n_valid
                for rgb, _, src, dst in pieces:
                    pixels[slot, :, dst[0], dst[1]] = rgb[:, src[0], src[1]]
                if chip.height < c or chip.width < c:  # a scene smaller than a chip: pad it
                    pixels[slot, :, chip.height :, :] = fill
                    pixels[slot, :, :, chip.width :] = fill
            del pieces, units
            for u in plan.chip_units[k]:
                if plan.units[u].last_chip == k:
                    self._drop(u)
            chips.append(chip)
            valids.append(valid)
            slots.append(n_valid if has_data else -1)
            flags.append(all_valid)
            n_valid += has_data
            self.batch_clock.add(busy=time.perf_counter() - t0)
            if n_valid >= self.batch_size:
                yield _Batch(chips, valids, slots, pixels, flags)
                pixels = self._buffers.take(pixels.shape)
                chips, valids, slots, flags, n_valid = [], [], [], [], 0
        if chips:
            yield _Batch(chips, valids, slots, pixels[:n_valid], flags)

    def recycle(self, batch: _Batch) -> None:
        """The consumer is done with ``batch.pixels``: reuse the buffer for a later batch."""
        if len(batch.pixels) == self.batch_size:
            self._buffers.give(batch.pixels)

    def _batcher(self) -> None:
        for batch in self._batches():
            self.flow.put(self.queue, batch, self.batch_clock)
        self.flow.put(self.queue, None, self.batch_clock)

    # -- the consumer's side -------------------------------------------------------------------

    def __iter__(self) -> Iterator[_Batch]:
        if self.threads == 0:
            yield from self._batches()
            return
        while True:
            t0 = time.perf_counter()
            item = self.flow.get(self.queue)
            self.wait_seconds += time.perf_counter() - t0
            if item is None:
                return
            yield item

    def __enter__(self) -> ChipReader:
        if self.threads == 0:
            return self
        self._scenes = [self.scene]
        clone = getattr(self.scene, "clone", None)
        n = min(self.threads, len(self.plan.units)) if clone is not None else 1
        try:
            for _ in range(n - 1):
                self._clones.append(clone())
        except BaseException:
            self._close_clones()
            raise
        self._scenes += self._clones
        for i, scene in enumerate(self._scenes):
            self._threads.append(self.flow.spawn(f"read-{i}", self._reader, scene))
        self.thread = self.flow.spawn("batch", self._batcher)
        self._threads.append(self.thread)
        return self

    def _close_clones(self) -> None:
        for scene in self._clones:
            scene.close()
        self._clones = []

    def __exit__(self, *exc: object) -> None:
        mine = [t for t in self.flow.threads if t in self._threads]
        if any(t.is_alive() for t in mine):  # left early: stop the readers before closing
            self.stop.set()
        for t in mine:
            if t.is_alive():
                t.join(timeout=60)
        self._close_clones()
        self._done.clear()
        self._buffers.clear()  # not needed past the last chip

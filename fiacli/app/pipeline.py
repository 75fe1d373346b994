"""``fiacli segment`` as a library: streaming tiled inference on scenes of any size.

The scene is never in memory. The run is stages that overlap, joined by small bounded queues
(:mod:`fiacli.geo.flow`), so memory stays flat and the slowest stage sets the pace:

* read: ``--threads`` reader threads, each with its own handle on the scene, decode windows of
  whole source blocks (each block once) and a batching thread cuts chips from them (``--chip``
  pixels, ``--overlap`` apart, edge chips shifted back inside the scene) in order
  (:class:`~fiacli.geo.tiling.ChipReader`);
* model: on the calling thread, which owns the device (``--batch-size auto``: the largest batch
  that fits a CUDA device; out of memory halves it once);
* write: :class:`~fiacli.geo.tiling.RowBlender` blends the probabilities (on CUDA: on the device,
  :mod:`fiacli.app.device_stream`) and hands out rows as soon as no later chip can touch them;
  they are thresholded, optionally opened and written to tiled GeoTIFFs;
* vectorise: a thread joins windows of rows into polygons, which a pool of threads labels,
  polygonises and unions, and a spooling thread batches them out
  (:class:`~fiacli.geo.vectorize.PolygonWriter`).

``--threads 1`` runs the same stages one after the other on the calling thread: the outputs are
the same, bit for bit, whatever the threads and the batch size. The first error of any stage
(a damaged tile, a full disk, CUDA out of memory, Ctrl-C) stops every stage, names the window or
chips, leaves nothing under a final name, and no thread running. The manifest's ``stages`` has
each stage's busy and waiting seconds and the one that bounds the run. Peak memory is about one
chip row of the scene, whatever its height.

Spatial words ("on the left") are relative to what the model sees, so ``scope`` says which image
that is. ``chip``: every chip is segmented with the full expression, so "left" means the left of
each chip. ``scene``: a coarse pass runs the full expression on the whole scene shrunk to one chip
(from the overviews when the file has them) to find *where* the object is; the full-resolution
chips then run with the object words only (``encode(expr, drop_position=True)``) and only inside
that region (plus a small margin), so "left" means the left of the whole scene. A scene that fits
in one chip has no difference between the two.

Pixels the model must see but that carry no data (nodata, and the padding of scenes smaller than a
chip at the right/bottom) are filled with the ImageNet mean, which the model's normalisation turns
into zero input; their output is nodata (255) or, for padding, not written at all.

``preview`` also writes a quicklook PNG (:mod:`fiacli.geo.preview`): the scene from its overviews
with the polygons outlined.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import queue
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rich.progress import TextColumn
from scipy import ndimage

from fiacli import __version__
from fiacli.app.segment_options import Outputs, SegmentOptions, preflight
from fiacli.core.console import progress as rich_progress
from fiacli.core.console import warn
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import atomic_output, scratch_folder
from fiacli.geo.flow import END, Flow
from fiacli.geo.raster import FILL_RGB, RasterRowWriter, Scene, open_scene, translate_to_cog
from fiacli.geo.tiling import ChipGrid, ChipReader, ChipWindow, RowBlender
from fiacli.geo.vectorize import PolygonWriter, RowOpening

SCENE_MARGIN = 4  # coarse-pass pixels added around the region found in scene scope
# GDAL's block cache: the decoded input tiles that neighbouring chips share (without it every
# read decodes its tiles again: 6x slower on JPEG scenes). In bytes: rasterio passes an integer
# GDAL_CACHEMAX to GDALSetCacheMax64, so 16 would mean 16 bytes. Bigger only grows with width.
GDAL_CACHE_BYTES = 16 * 2**20
FLUSH_ROWS = 64  # rows thresholded at a time (bounds the temporaries)
OVERLAP_SHARE = 0.2  # default overlap: 96 px of a 480-px chip
CPU_BATCH = 4  # --batch-size auto without a CUDA device
DEVICE_BLEND: bool | None = None  # None: blend on the device on CUDA (tests force it on CPU)


@runtime_checkable
class ChipPredictor(Protocol):
    """What the pipeline needs from a model (``fiacli.app.predictor.RefSegPredictor`` is one)."""

    image_size: int  # chip side the model was trained on

    def encode(self, expression: str, *, drop_position: bool = False) -> Any:
        """Text features, computed once per scene and expression."""

    def predict(self, chips: np.ndarray, encoded: Any) -> np.ndarray:
        """``(B, 3, H, W)`` uint8 RGB -> ``(B, H, W)`` float32 foreground probability in [0, 1]."""


def load_predictor(
    model: str | os.PathLike[str] | None, *, device: str = "auto", precision: str = "fp32"
) -> ChipPredictor:
    """The FIANet predictor of a fiacli checkpoint, with clear errors for the usual mistakes."""
    if model is None:
        raise UsageError("no model given: pass -m MODEL.safetensors (a fiacli checkpoint)")
    from fiacli.core.device import autocast, resolve_device

    autocast(resolve_device(device), precision)  # bad --device/--precision: say so first
    path = Path(model)
    if not path.is_file():
        raise FiacliError(
            f"model not found: {path} (neither a file nor a name listed by `fiacli models`)"
        )
    try:
        from fiacli.app.predictor import RefSegPredictor
    except ImportError as exc:
        raise FiacliError(f"the FIANet predictor is not available ({exc})") from None
    try:
        return RefSegPredictor.from_checkpoint(path, device=device, precision=precision)
    except (FiacliError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FiacliError(f"{path} is not a fiacli checkpoint ({detail})") from None


@dataclass
class SegmentResult:
    """What a run did: the ``--json`` summary and the core of the manifest."""

    scene: dict[str, Any]
    expressions: list[str]
    outputs: dict[str, Any]
    chips: dict[str, int]
    per_expression: list[dict[str, Any]]
    timings_s: dict[str, float]
    options: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    # per stage of the streaming pass: threads, busy and waiting seconds (see fiacli.geo.flow)
    stages: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SceneRegion:
    """Where the coarse pass of ``scope="scene"`` found the object, on a grid of coarse pixels."""

    mask: np.ndarray  # (h, w) bool over the whole scene
    height: int
    width: int
    row0: int = 0  # the scene row of the grid's first row (a band of a split scene: not 0)

    def _index(self, start: int, n: int, size: int, coarse: int) -> np.ndarray:
        return np.minimum(((start + np.arange(n) + 0.5) * coarse / size).astype(int), coarse - 1)

    def window(self, chip: ChipWindow) -> np.ndarray:
        rows = self._index(self.row0 + chip.y, chip.height, self.height, self.mask.shape[0])
        cols = self._index(chip.x, chip.width, self.width, self.mask.shape[1])
        return self.mask[np.ix_(rows, cols)]

    def to_json(self) -> dict[str, Any]:
        """JSON-able (ranks exchange JSON): the mask's bits in hex."""
        bits = np.packbits(self.mask).tobytes().hex()
        return {"shape": list(self.mask.shape), "bits": bits, "height": self.height,
                "width": self.width, "row0": self.row0}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneRegion:
        h, w = data["shape"]
        bits = np.frombuffer(bytes.fromhex(data["bits"]), np.uint8)
        mask = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
        return cls(mask, int(data["height"]), int(data["width"]), int(data["row0"]))


def coarse_regions(
    scene: Scene,
    predictor: ChipPredictor,
    expressions: Sequence[str],
    chip: int,
    threshold: float,
) -> list[SceneRegion]:
    """Scene-scope first pass: the full expression on the whole scene shrunk to one chip."""
    scale = max(scene.height, scene.width) / chip
    ch = max(1, min(chip, round(scene.height / scale)))
    cw = max(1, min(chip, round(scene.width / scale)))
    rgb, valid = scene.read_overview(ch, cw)
    pixels = np.empty((1, 3, chip, chip), np.uint8)
    pixels[:] = np.asarray(FILL_RGB, np.uint8)[None, :, None, None]
    pixels[0, :, :ch, :cw] = rgb
    regions = []
    for text in expressions:
        prob = predictor.predict(pixels, predictor.encode(text))[0, :ch, :cw]
        found = (np.nan_to_num(prob) > threshold) & valid
        if not found.any():
            warn(f"scene scope: the coarse pass found nothing for {text!r}; its output is empty")
        region = ndimage.binary_dilation(found, iterations=SCENE_MARGIN) if found.any() else found
        regions.append(SceneRegion(region, scene.height, scene.width))
    return regions


class _Sinks:
    """Final rows -> threshold -> optional opening -> mask/probability GeoTIFFs and polygons."""

    def __init__(
        self,
        bands: int,
        threshold: float,
        mask: RasterRowWriter | None,
        prob: RasterRowWriter | None,
        polygons: PolygonWriter | None,
        opening: RowOpening | None,
    ) -> None:
        self.threshold, self.mask, self.prob = threshold, mask, prob
        self.polygons, self.opening = polygons, opening
        self.need_prob = prob is not None or polygons is not None
        self.foreground = np.zeros(bands, np.int64)
        self.valid_pixels = 0

    def write(self, block: np.ndarray, valid: np.ndarray, all_valid: bool, *, last: bool) -> None:
        """Consume final rows ``(bands, h, width)`` in [0, 1] and their validity ``(h, width)``
        (``all_valid``: no invalid pixel); ``block`` is overwritten."""
        h = block.shape[1]
        for s in range(0, h, FLUSH_ROWS):
            sub, ok = block[:, s : s + FLUSH_ROWS], valid[s : s + FLUSH_ROWS]
            mask = np.greater(sub, self.threshold).view(np.uint8)
            if not all_valid:
                mask[:, ~ok] = 255
            prob = None
            if self.need_prob:  # in place: no float temporaries the size of the block
                np.rint(np.multiply(sub, 255, out=sub), out=sub)
                prob = sub.astype(np.uint8)
                if not all_valid:
                    prob[:, ~ok] = 0
            self.emit(mask, prob, ok, all_valid, last=last and s + FLUSH_ROWS >= h)

    def emit(self, mask: np.ndarray, prob: np.ndarray | None, valid: np.ndarray,
             all_valid: bool, *, last: bool) -> None:  # fmt: skip
        """Consume thresholded rows: uint8 ``mask`` (1, 0, 255 nodata), ``prob`` (0-255)."""
        if self.opening is None:
            self._emit(mask, prob, valid, all_valid)
            return
        for m, p, v in self.opening.push(mask, prob, valid.copy(), last=last):
            self._emit(m, p, v, all_valid and bool(v.all()))

    def _emit(self, mask: np.ndarray, prob: np.ndarray | None, valid: np.ndarray,
              all_valid: bool) -> None:  # fmt: skip
        for band, m in enumerate(mask):  # all valid: 0/1 only, counting nonzero is enough
            self.foreground[band] += np.count_nonzero(m if all_valid else m == 1)
        self.valid_pixels += valid.size if all_valid else int(np.count_nonzero(valid))
        if self.mask is not None:
            self.mask.write(mask)
        if self.prob is not None:
            self.prob.write(prob, valid, all_valid=all_valid)
        if self.polygons is not None:
            for band in range(mask.shape[0]):
                self.polygons.add_rows(band, mask[band], None if prob is None else prob[band])


def _disk_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "no space left" in text or "disk is full" in text  # GDAL, SQLite (a GeoPackage)


def scene_regions(
    src: str | os.PathLike[str],
    expressions: Sequence[str],
    options: SegmentOptions,
    *,
    predictor: ChipPredictor,
) -> list[SceneRegion] | None:
    """The coarse pass of ``scope="scene"`` over the whole scene ``src``, one region per
    expression, for :func:`segment_raster`'s ``regions`` (the bands of a split scene are cut by
    the whole scene's region); None where it does not apply: chip scope, a scene of one chip."""
    if options.scope != "scene":
        return None
    with _opened(src, options) as scene:
        grid = _grid(scene, options, predictor)
        if len(grid) <= 1:
            return None
        return coarse_regions(scene, predictor, expressions, grid.chip, options.threshold)


@contextlib.contextmanager
def _opened(src: str | os.PathLike[str], opts: SegmentOptions) -> Iterator[Scene]:
    """The scene as the model sees it, in GDAL's settings for the run, its damaged windows
    handled as ``--on-read-error`` says (fail naming them, or nodata)."""
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    scene_args = {"bands": opts.bands, "resolution": opts.resolution,
                  "allow_ungeoreferenced": opts.allow_ungeoreferenced}  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, **env), open_scene(src, **scene_args) as scene:
        if scene.read_guard is not None:
            scene.read_guard.on_error = opts.on_read_error
        yield scene


def chip_and_overlap(opts: SegmentOptions, predictor: ChipPredictor) -> tuple[int, int]:
    """``--chip`` (default: the model's own image size) and ``--overlap`` (default: a fifth of
    the chip) in pixels."""
    size = int(opts.chip or predictor.image_size)
    overlap = opts.overlap if opts.overlap is not None else round(size * OVERLAP_SHARE)
    return size, int(overlap)


def _grid(scene: Scene, opts: SegmentOptions, predictor: ChipPredictor) -> ChipGrid:
    return ChipGrid(scene.height, scene.width, *chip_and_overlap(opts, predictor))


def segment_raster(
    src: str | os.PathLike[str],
    expressions: str | Sequence[str],
    output: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    options: SegmentOptions | None = None,
    *,
    predictor: ChipPredictor,
    model_info: dict[str, Any] | None = None,
    show_progress: bool = False,
    regions: Sequence[SceneRegion] | None = None,
    **changes: Any,
) -> SegmentResult:
    """Segment ``expressions`` in the scene ``src`` and write ``output`` (by extension).

    ``.tif``: uint8 mask, one band per expression (1 object, 0 background, 255 nodata);
    ``.gpkg/.geojson/.parquet/.shp/.fgb``: polygons with ``expression``, ``area_m2``, ``pixels``
    and ``mean_prob``; ``probabilities``: a uint8 0-255 GeoTIFF (nodata in its mask band);
    ``preview``: a PNG quicklook with the polygons outlined (:mod:`fiacli.geo.preview`).
    ``options`` (:class:`~fiacli.app.segment_options.SegmentOptions`) and keyword ``changes`` to
    it (``chip=``, ``scope=`` …; an unknown name is an error) say how; ``scope`` is ``"chip"`` or
    ``"scene"`` (see the module docstring). A file appears under its final name only when
    complete; a failure or Ctrl-C leaves nothing behind. ``regions``: the scene-scope coarse
    pass already made (:func:`scene_regions`), instead of one over ``src`` itself.
    """
    t_start = time.perf_counter()
    _return_freed_memory()
    opts = SegmentOptions.build(options, **changes)
    if regions is not None and opts.scope != "scene":
        raise UsageError("regions= are the coarse pass of scope='scene'; pass scope='scene'")
    plan = preflight(src, expressions, output, opts)
    texts, outs = plan.expressions, plan.outputs
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _opened(src, opts) as scene:
        for note in scene.warnings:
            warn(note)
        grid = _grid(scene, opts, predictor)
        timings["open"] = time.perf_counter() - t0
        try:
            return _run(scene, grid, texts, outs, predictor, opts, timings, t_start,
                        model_info=model_info, show_progress=show_progress,
                        given_regions=regions)  # fmt: skip
        except (FiacliError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _disk_error(exc):
                raise FiacliError(
                    "disk full while writing the outputs; nothing was written"
                ) from None
            raise


def _run(scene: Scene, grid: ChipGrid, texts: list[str], outs: Outputs,
         predictor: ChipPredictor, opts: SegmentOptions, timings: dict[str, float],
         t_start: float, *, model_info: dict[str, Any] | None, show_progress: bool,
         given_regions: Sequence[SceneRegion] | None) -> SegmentResult:  # fmt: skip
    """The streaming pass and the writing of every output (inside their atomic contexts)."""
    n_bands = len(texts)
    scope = opts.scope if len(grid) > 1 else "chip"  # one chip: the two scopes coincide
    t0 = time.perf_counter()
    regions: list[SceneRegion | None] = [None] * n_bands
    if given_regions is not None:  # a band of a split scene: the whole scene's coarse pass
        scope, regions = "scene", list(given_regions)
    elif scope == "scene":
        regions = list(coarse_regions(scene, predictor, texts, grid.chip, opts.threshold))
    timings["coarse_pass"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = encode_all(predictor, texts, drop_position=scope == "scene",
                         show_progress=show_progress)  # fmt: skip
    timings["encode"] = time.perf_counter() - t0
    threads = resolve_threads(opts.threads, predictor)
    batch_size = resolve_batch_size(opts.batch_size, predictor, grid.chip, encoded[0])
    flow = Flow()

    with contextlib.ExitStack() as stack:
        finals = outs.finals()
        tmp = {p: stack.enter_context(atomic_output(p, overwrite=opts.overwrite)) for p in finals}
        scratch = None
        if opts.cog:  # COGs are copied from a finished GeoTIFF, built in a hidden scratch folder
            folder = scratch_folder(finals[0].parent, "cog")
            scratch = Path(stack.enter_context(folder))
        tags = {"fiacli_version": __version__, "expressions": json.dumps(texts)}
        writers: dict[str, tuple[RasterRowWriter, Path]] = {}
        for kind, path in (("mask", outs.mask), ("probabilities", outs.probabilities)):
            if path is not None:
                w = RasterRowWriter(
                    scratch / f"{kind}.tif" if scratch else tmp[path],
                    width=grid.width, height=grid.height, count=n_bands,
                    transform=scene.transform, crs=scene.crs, descriptions=texts, tags=tags,
                    nodata=255 if kind == "mask" else None, internal_mask=kind != "mask",
                    threads=threads,
                )  # fmt: skip
                stack.callback(w.abort)
                writers[kind] = (w, tmp[path])
        wants_polygons = bool(outs.vectors) or outs.preview is not None
        polygons = None
        if wants_polygons:
            polygons = stack.enter_context(PolygonWriter(
                grid.width, texts, finals[0].parent, transform=scene.transform, crs=scene.crs,
                min_area=opts.min_area, simplify=opts.simplify,
                workers=0 if threads == 1 else threads, flow=flow,
            ))  # fmt: skip
        sinks = _Sinks(
            n_bands, opts.threshold, writers.get("mask", (None,))[0],
            writers.get("probabilities", (None,))[0], polygons,
            RowOpening(opts.open_px) if opts.open_px > 0 else None,
        )  # fmt: skip
        stack.enter_context(flow)  # left first: every thread is joined before any cleanup
        t0 = time.perf_counter()
        stream = _Stream(scene, grid, predictor, encoded, regions, sinks, opts, threads=threads,
                         batch_size=batch_size, flow=flow, show_progress=show_progress)  # fmt: skip
        counts = stream.run()
        if polygons is not None:
            polygons.drain()  # the rows still queued for the vectoriser
        stream_s = time.perf_counter() - t0
        clocks = flow.clocks
        timings.update(
            read=clocks["read"].busy_s, wait_for_read=clocks["model"].wait_in_s,
            model=clocks["model"].busy_s, stitch_and_write=clocks["write"].busy_s,
            stream=stream_s,
        )  # fmt: skip

        t0 = time.perf_counter()
        for kind, (w, final_tmp) in writers.items():
            resampling = Resampling.nearest if kind == "mask" else Resampling.average
            w.close(overview_resampling=None if scratch else resampling)
            if scratch:
                translate_to_cog(w.path, final_tmp, mask=kind == "mask", threads=threads)
        timings["finalize_rasters"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_polygons: list[int | None] = [None] * n_bands
        if polygons is not None:
            n_polygons = list(polygons.finish())
            for path in outs.vectors:
                polygons.write(tmp[path], dst_crs=opts.dst_crs)
        timings["vectorize"] = time.perf_counter() - t0
        if outs.preview is not None and polygons is not None:
            from fiacli.geo.preview import write_scene_preview

            t0 = time.perf_counter()
            write_scene_preview(tmp[outs.preview], scene, polygons.frames(), texts)
            timings["preview"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start

        record = opts.record()
        record.update(chip=grid.chip, overlap=grid.overlap, effective_scope=scope)
        notes = _read_notes(scene, sinks.valid_pixels)
        result = SegmentResult(
            scene={**scene.describe(), "valid_pixels": sinks.valid_pixels, **_skipped(scene)},
            expressions=texts,
            outputs=outs.as_dict(),
            chips=counts,
            per_expression=[
                {"expression": t, "foreground_pixels": int(f), "polygons": n}
                for t, f, n in zip(texts, sinks.foreground, n_polygons, strict=True)
            ],
            timings_s={k: round(v, 4) for k, v in timings.items()},
            options=record,
            warnings=[*scene.warnings, *notes],
            stages={
                "threads": threads,
                "batch_size": stream.batch_size,
                "blend_on_device": stream.on_device,
                **_stage_report(clocks, stream_s),
            },
        )
        if outs.manifest is not None:
            write_manifest(outs.manifest, result, model_info, overwrite=opts.overwrite)
    return result


def _finite_unit(p: np.ndarray) -> np.ndarray:
    """``p`` as float32 with NaN -> 0 and values clipped to [0, 1] (a copy only when needed)."""
    p = np.asarray(p)
    if p.dtype != np.float32:
        p = p.astype(np.float32)
    if p.size and not (p.min() >= 0 and p.max() <= 1):  # NaN fails both
        if not p.flags.writeable:
            p = p.copy()
        np.nan_to_num(p, copy=False, nan=0.0)
        np.clip(p, 0, 1, out=p)
    return p


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _empty_device_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


_MALLOC_TUNED = False
MMAP_THRESHOLD = 2**20  # bytes; buffers this large are mmapped, so freeing returns them


def _return_freed_memory() -> None:
    """Keep large buffers mmapped so that freeing them returns them to the system (glibc).

    glibc raises its mmap threshold each time a large block is freed, so later blocks that size
    come from heaps it keeps; with a run's threads allocating (an arena each) the peak RSS of a
    20,000² scene grew by 110 MB over its live buffers. A fixed threshold of 1 MiB keeps that to
    20 MB (128 KiB, glibc's initial value: none, but page faults then cost 25% more CPU time on
    the near-free model); fianet-tiny's speed on CPU is unchanged.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


ENCODE_PROGRESS = 64  # expressions from which encoding them shows a progress bar


def encode_all(predictor: ChipPredictor, texts: Sequence[str], *, drop_position: bool,
               show_progress: bool = False) -> list[Any]:  # fmt: skip
    """Every expression encoded once: in batches when the predictor can (``encode_many``: 1,000
    expressions no longer take minutes one by one), with a progress bar for many of them."""
    many = getattr(predictor, "encode_many", None)
    if not callable(many):
        return [predictor.encode(t, drop_position=drop_position) for t in texts]
    bar = rich_progress(transient=True)
    bar.disable = bar.disable or not show_progress or len(texts) < ENCODE_PROGRESS
    with bar:
        task = bar.add_task("encoding expressions", total=len(texts))
        return list(many(list(texts), drop_position=drop_position,
                         on_batch=lambda n: bar.advance(task, n)))  # fmt: skip


def resolve_threads(threads: int | None, predictor: Any = None) -> int:
    """``--threads``: a number, or None (or 0): every CPU this process may use, except when the
    model itself computes on the CPU (a predictor whose ``device`` is the CPU): then 1, the
    stages in turn between model calls, so that the model keeps every core (with fianet-tiny on
    2 cores the overlapped stages took more CPU time than they saved: end to end / model time
    1.07-1.09 vs 1.04-1.06 in turn)."""
    if threads:
        return int(threads)
    if getattr(getattr(predictor, "device", None), "type", None) == "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_batch_size(batch_size: int | str, predictor: Any, chip: int, encoded: Any) -> int:
    """``--batch-size``: a number, or ``auto``: what the predictor says fits its device (the
    largest batch that fits a CUDA device's memory), else :data:`CPU_BATCH`."""
    if batch_size != "auto":
        return int(batch_size)
    choose = getattr(predictor, "auto_batch_size", None)
    if callable(choose):
        chosen = choose(chip, encoded)
        if chosen:
            return int(chosen)
    return CPU_BATCH


Item = tuple[Any, list[tuple[list[int], np.ndarray] | None]]  # a batch and its predictions


def _device_blending(predictor: Any) -> bool:
    """Blend and threshold on the model's device: a predictor whose own class can return
    device tensors (``predict_tensor``), on CUDA (:data:`DEVICE_BLEND` forces it either way)."""
    if not callable(getattr(type(predictor), "predict_tensor", None)):
        return False  # wrappers that delegate by __getattr__ keep their own predict()
    if DEVICE_BLEND is not None:
        return DEVICE_BLEND
    return getattr(getattr(predictor, "device", None), "type", None) == "cuda"


class _Stream:
    """One streaming pass over the scene, as stages: read -> model -> blend, threshold and
    write -> vectorise (see the module docstring). ``threads == 1`` runs them one after the
    other on the calling thread (the serial reference); more overlap them, each stage on its
    own thread(s), joined by bounded queues: outputs are the same bit for bit. The model runs
    on the calling thread, which owns the device; on CUDA it also blends and thresholds there
    (:mod:`fiacli.app.device_stream`) and the writing thread only writes."""

    def __init__(self, scene: Scene, grid: ChipGrid, predictor: ChipPredictor,
                 encoded: list[Any], regions: list[SceneRegion | None], sinks: _Sinks,
                 opts: SegmentOptions, *, threads: int, batch_size: int, flow: Flow,
                 show_progress: bool) -> None:  # fmt: skip
        self.scene, self.grid, self.predictor = scene, grid, predictor
        self.encoded, self.regions, self.sinks, self.opts = encoded, regions, sinks, opts
        self.threads, self.batch_size, self.flow = threads, batch_size, flow
        self.show_progress = show_progress
        self.counts = {"total": len(grid), "predicted": 0, "skipped_nodata": 0,
                       "skipped_outside": 0}  # fmt: skip
        self.model_clock = flow.clock("model")
        self.write_clock = flow.clock("write")
        self.halved = False
        self.last_row = grid.shape[0] - 1
        self.on_device = _device_blending(predictor)
        if self.on_device:
            from fiacli.app.device_stream import DeviceRows, Stager, TorchBlender, finite_unit

            device = predictor.device  # type: ignore[attr-defined]
            self.stage = Stager(device)
            self.blender: RowBlender = TorchBlender(grid, len(encoded), opts.blend, device)
            self.to_host = DeviceRows(float(opts.threshold), sinks.need_prob, device)
            self.finite: Any = finite_unit
            self.regions_on = [
                None if r is None else _RegionOnDevice(r, device) for r in regions
            ]  # fmt: skip
        else:
            self.blender = RowBlender(grid, len(encoded), opts.blend)  # type: ignore[arg-type]
            self.finite = _finite_unit
            self.regions_on = list(regions)

    # -- the model: on the calling thread, which owns the device -------------------------------

    def _predict(self, batch: Any, pixels: Any) -> list[tuple[list[int], Any] | None]:
        """Each expression on the chips with data (in scene scope: inside its region)."""
        out: list[tuple[list[int], Any] | None] = []
        for enc, region in zip(self.encoded, self.regions, strict=True):
            wanted = [
                k for k, s in enumerate(batch.slot)
                if s >= 0 and (region is None or region.window(batch.chips[k]).any())
            ]  # fmt: skip
            if not wanted:
                out.append(None)
                continue
            slots = [batch.slot[k] for k in wanted]
            chips = pixels if slots == list(range(len(pixels))) else pixels[slots]
            p = self._model(chips, enc, [batch.chips[k] for k in wanted])
            if tuple(p.shape) != (len(wanted), *chips.shape[2:]):
                raise FiacliError(
                    f"the model returned {tuple(p.shape)} for chips {tuple(chips.shape)}; "
                    "expected one probability map per chip, chip-sized"
                )
            out.append((wanted, p))
        return out

    def _model(self, chips: Any, encoded: Any, windows: list[ChipWindow]) -> Any:
        """``predict`` in calls of at most the batch size; a CUDA out-of-memory error halves
        the batch size once (with a warning) and retries."""
        parts, i = [], 0
        while i < len(chips):
            step = self.batch_size
            t0 = time.perf_counter()
            try:
                if self.on_device:
                    p = self.predictor.predict_tensor(chips[i : i + step], encoded)  # type: ignore[attr-defined]
                else:
                    p = np.asarray(self.predictor.predict(chips[i : i + step], encoded))
            except Exception as exc:
                if not _is_cuda_oom(exc):
                    raise
                first, last = windows[i], windows[min(i + step, len(windows)) - 1]
                where = f"chips {first.row},{first.col} to {last.row},{last.col}"
                if self.halved or step <= 1:
                    raise FiacliError(
                        f"CUDA out of memory at batch size {step} ({where}), even after halving "
                        "it once; pass a smaller --batch-size or --precision bf16"
                    ) from None
                self.halved, self.batch_size = True, max(1, step // 2)
                warn(f"CUDA out of memory at batch size {step} ({where}); "
                     f"retrying at batch size {self.batch_size}")  # fmt: skip
                _empty_device_cache()
                continue
            finally:
                self.model_clock.add(busy=time.perf_counter() - t0)
            parts.append(p)
            i += len(p) if len(p) else step
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else _cat(parts)

    # -- blending ------------------------------------------------------------------------------

    def _blend(self, item: Item, emit: Any) -> None:
        """Blend a batch's chips; ``emit(rows, valid, all_valid, last)`` gets each chip row
        they complete (views that the next chip overwrites: use them at once)."""
        batch, preds = item
        arrays = []
        for pred in preds:
            if pred is None:
                arrays.append(None)
                continue
            wanted, p = pred
            arrays.append(({k: j for j, k in enumerate(wanted)}, self.finite(p)))
        for k, chip in enumerate(batch.chips):
            bands: list[Any] | None = None
            if batch.slot[k] < 0:
                self.counts["skipped_nodata"] += 1
            else:
                bands = []
                for a, region in zip(arrays, self.regions_on, strict=True):
                    j = None if a is None else a[0].get(k)
                    if j is None:
                        bands.append(None)
                        continue
                    p = a[1][j][: chip.height, : chip.width]
                    bands.append(p if region is None else p * region.window(chip))
                ran = any(b is not None for b in bands)
                self.counts["predicted" if ran else "skipped_outside"] += 1
            ready = self.blender.add(chip, bands, batch.valid[k], batch.all_valid[k])
            if ready is not None:
                _, rows, valid, all_valid = ready
                emit(rows, valid, all_valid, chip.row == self.last_row)

    def _consume(self, item: Any) -> None:
        """The writing stage: a batch and its predictions (CPU), or finished rows (device)."""
        t0 = time.perf_counter()
        if self.on_device:
            mask, prob, event, valid, all_valid, last = item
            if event is not None:  # the copy back from the device has completed
                event.synchronize()
            mask = mask if isinstance(mask, np.ndarray) else mask.numpy()
            prob = prob if prob is None or isinstance(prob, np.ndarray) else prob.numpy()
            if not all_valid:
                mask[:, ~valid] = 255
                if prob is not None:
                    prob[:, ~valid] = 0
            h = mask.shape[1]
            for s in range(0, h, FLUSH_ROWS):  # the chunks the CPU path emits
                cut = slice(s, s + FLUSH_ROWS)
                part = None if prob is None else prob[:, cut]
                end = last and s + FLUSH_ROWS >= h
                self.sinks.emit(mask[:, cut], part, valid[cut], all_valid, last=end)
            self.write_clock.add(busy=time.perf_counter() - t0, items=1)
            return
        self._blend(item, lambda rows, valid, all_valid, last: self.sinks.write(
            rows, valid, all_valid, last=last))  # fmt: skip
        self.write_clock.add(busy=time.perf_counter() - t0, items=len(item[0].chips))

    def _on_device(self, item: Item) -> list[Any]:
        """Device mode, on the model's thread: blend there, start copying the rows back."""
        t0 = time.perf_counter()
        out = []

        def emit(rows: Any, valid: np.ndarray, all_valid: bool, last: bool) -> None:
            mask, prob, event = self.to_host(rows)  # new tensors: the next chip may overwrite
            out.append((mask, prob, event, valid.copy(), all_valid, last))

        self._blend(item, emit)
        self.model_clock.add(busy=time.perf_counter() - t0)
        return out

    def _writer(self, q: queue.Queue[Any]) -> None:
        while True:
            item = self.flow.get(q, self.write_clock)
            if item is END:
                return
            self._consume(item)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        grid, flow = self.grid, self.flow
        serial = self.threads == 1
        bar = rich_progress(TextColumn("{task.fields[rate]}"))
        bar.disable = bar.disable or not self.show_progress
        pixels_per_chip = grid.height * grid.width / max(len(grid), 1)
        depth = 2  # batches ready ahead of the model
        reader = ChipReader(self.scene, grid, self.batch_size, depth,
                            threads=0 if serial else self.threads, flow=flow)  # fmt: skip
        q: queue.Queue[Any] = queue.Queue(maxsize=1)  # a batch's maps waiting to be blended
        writer = None
        t_start = time.perf_counter()
        with bar, reader:
            task = bar.add_task("segmenting", total=len(grid), rate="")
            if not serial:
                writer = flow.spawn("write", self._writer, q)
            done = 0
            t0 = time.perf_counter()
            for batch in reader:
                self.model_clock.add(wait_in=time.perf_counter() - t0)
                pixels = self.stage(batch.pixels) if self.on_device else batch.pixels
                item = (batch, self._predict(batch, pixels))
                reader.recycle(batch)  # its pixels are on the device or through the model
                batch.pixels = pixels = None  # the writer needs the chips' places, not pixels
                items = self._on_device(item) if self.on_device else [item]
                for it in items:
                    if serial:
                        self._consume(it)
                    else:
                        flow.put(q, it, self.model_clock)
                done += len(batch.chips)
                elapsed = max(time.perf_counter() - t_start, 1e-9)
                rate = (f"{done / elapsed:,.0f} chips/s, "
                        f"{done * pixels_per_chip / elapsed / 1e6:,.1f} Mpx/s")  # fmt: skip
                bar.update(task, advance=len(batch.chips), rate=rate)
                t0 = time.perf_counter()
            self.model_clock.add(items=done)
            if writer is not None:
                flow.put(q, END, self.model_clock)
                while writer.is_alive():
                    flow.check()
                    writer.join(timeout=0.05)
                flow.check()
        return self.counts


class _RegionOnDevice:
    """A :class:`SceneRegion` whose chip windows are bool tensors on the model's device."""

    def __init__(self, region: SceneRegion, device: Any) -> None:
        self.region, self.device = region, device

    def window(self, chip: ChipWindow) -> Any:
        import torch

        return torch.from_numpy(self.region.window(chip)).to(self.device)


def _cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts)


def _stage_report(clocks: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Per stage: threads, busy and waiting seconds; ``bound_by``: the stage busiest for its
    threads (the one that sets the pace), ``wall_s``: the streaming pass end to end."""
    per = {name: clock.as_dict() for name, clock in clocks.items()}
    share = {n: c.busy_s / max(c.threads, 1) for n, c in clocks.items()}
    busiest = max(share, key=share.__getitem__) if share else None
    for name, item in per.items():
        item["busy_share"] = round(share[name] / wall_s, 3) if wall_s > 0 else None
    return {"wall_s": round(wall_s, 4), "bound_by": busiest, "stages": per}


def _skipped(scene: Scene) -> dict[str, Any]:
    """The windows read as nodata because they were damaged (--on-read-error skip), if any."""
    skipped = list(getattr(scene.read_guard, "skipped", None) or [])
    return {"skipped_windows": skipped} if skipped else {}


def _read_notes(scene: Scene, valid_pixels: int) -> list[str]:
    """Warnings about what the scene gave: windows skipped as damaged, or no valid pixel at all
    (all nodata or NaN: the outputs are empty, which must not pass for "nothing found")."""
    notes = []
    skipped = scene.read_guard.summary() if scene.read_guard is not None else None
    if skipped:
        notes.append(skipped)
    if valid_pixels == 0:
        notes.append(
            f"{scene.path} holds no valid pixel in the bands read (all nodata, masked or NaN): "
            "the outputs are empty"
        )
    for note in notes:
        warn(note)
    return notes


def write_manifest(path: Path, result: Any, model_info: dict[str, Any] | None, *,
                   overwrite: bool) -> None:  # fmt: skip
    """Provenance beside the outputs: model, expressions, options, fiacli version (``result``
    is a :class:`SegmentResult` or anything with ``to_dict()``, e.g. an area run's result)."""
    payload = {
        "fiacli_version": __version__,
        "command": "segment",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_info,
        **result.to_dict(),
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")

"""``fiacli segment`` as a library: streaming tiled inference on scenes of any size.

The scene is never in memory. A background thread reads chips (``--chip`` pixels, ``--overlap``
apart, edge chips shifted back inside the scene) and batches them; the model runs on the main
thread; :class:`~fiacli.geo.tiling.RowStitcher` blends the probabilities and hands out rows as
soon as no later chip can touch them; those rows are thresholded, optionally opened, written to
tiled GeoTIFFs and fed to the streaming vectoriser. Peak memory is one chip row of the scene.

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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import rasterio
from rasterio.enums import Resampling
from scipy import ndimage

from fiacli import __version__
from fiacli.app.segment_options import Outputs, SegmentOptions, preflight
from fiacli.core.console import progress as rich_progress
from fiacli.core.console import warn
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import atomic_output
from fiacli.geo.raster import FILL_RGB, RasterRowWriter, Scene, open_scene, translate_to_cog
from fiacli.geo.tiling import ChipGrid, ChipReader, ChipWindow, RowStitcher
from fiacli.geo.vectorize import PolygonWriter, RowOpening

SCENE_MARGIN = 4  # coarse-pass pixels added around the region found in scene scope
# GDAL's block cache: the decoded input tiles that neighbouring chips share (without it every
# read decodes its tiles again: 6x slower on JPEG scenes). In bytes: rasterio passes an integer
# GDAL_CACHEMAX to GDALSetCacheMax64, so 16 would mean 16 bytes. Bigger only grows with width.
GDAL_CACHE_BYTES = 16 * 2**20
FLUSH_ROWS = 64  # rows thresholded at a time (bounds the temporaries)
OVERLAP_SHARE = 0.2  # default overlap: 96 px of a 480-px chip


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SceneRegion:
    """Where the coarse pass of ``scope="scene"`` found the object, on a grid of coarse pixels."""

    mask: np.ndarray  # (h, w) bool over the whole scene
    height: int
    width: int

    def _index(self, start: int, n: int, size: int, coarse: int) -> np.ndarray:
        return np.minimum(((start + np.arange(n) + 0.5) * coarse / size).astype(int), coarse - 1)

    def window(self, chip: ChipWindow) -> np.ndarray:
        rows = self._index(chip.y, chip.height, self.height, self.mask.shape[0])
        cols = self._index(chip.x, chip.width, self.width, self.mask.shape[1])
        return self.mask[np.ix_(rows, cols)]


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
        self.seconds = 0.0

    def write(self, block: np.ndarray, *, last: bool) -> None:
        """Consume final rows ``(bands, h, width)`` (NaN = nodata); ``block`` is overwritten."""
        t0 = time.perf_counter()
        h = block.shape[1]
        for s in range(0, h, FLUSH_ROWS):
            sub = block[:, s : s + FLUSH_ROWS]
            valid = ~np.isnan(sub[0])
            mask = np.greater(sub, self.threshold).view(np.uint8)  # NaN compares False
            mask[:, ~valid] = 255
            prob = None
            if self.need_prob:  # in place: no float temporaries the size of the block
                np.nan_to_num(sub, copy=False, nan=0.0)
                np.rint(np.multiply(sub, 255, out=sub), out=sub)
                prob = sub.astype(np.uint8)
            if self.opening is None:
                self._emit(mask, prob, valid)
            else:
                final = last and s + FLUSH_ROWS >= h
                for m, p, v in self.opening.push(mask, prob, valid, last=final):
                    self._emit(m, p, v)
        self.seconds += time.perf_counter() - t0

    def _emit(self, mask: np.ndarray, prob: np.ndarray | None, valid: np.ndarray) -> None:
        self.foreground += (mask == 1).sum(axis=(1, 2))
        self.valid_pixels += int(valid.sum())
        if self.mask is not None:
            self.mask.write(mask)
        if self.prob is not None:
            self.prob.write(prob, valid)
        if self.polygons is not None:
            for band in range(mask.shape[0]):
                self.polygons.add_rows(band, mask[band], None if prob is None else prob[band])


def _disk_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "no space left" in text or "disk is full" in text  # GDAL / SQLite (the spool)


def segment_raster(
    src: str | os.PathLike[str],
    expressions: str | Sequence[str],
    output: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    options: SegmentOptions | None = None,
    *,
    predictor: ChipPredictor,
    model_info: dict[str, Any] | None = None,
    show_progress: bool = False,
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
    complete; a failure or Ctrl-C leaves nothing behind.
    """
    t_start = time.perf_counter()
    opts = SegmentOptions.build(options, **changes)
    plan = preflight(src, expressions, output, opts)
    texts, outs = plan.expressions, plan.outputs
    timings: dict[str, float] = {}
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    t0 = time.perf_counter()
    scene_args = {"bands": opts.bands, "resolution": opts.resolution,
                  "allow_ungeoreferenced": opts.allow_ungeoreferenced}  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, **env), open_scene(src, **scene_args) as scene:
        for note in scene.warnings:
            warn(note)
        size = int(opts.chip or predictor.image_size)
        overlap = opts.overlap if opts.overlap is not None else round(size * OVERLAP_SHARE)
        grid = ChipGrid(scene.height, scene.width, size, overlap)
        timings["open"] = time.perf_counter() - t0
        try:
            return _run(scene, grid, texts, outs, predictor, opts, timings, t_start,
                        model_info=model_info, show_progress=show_progress)  # fmt: skip
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
         t_start: float, *, model_info: dict[str, Any] | None,
         show_progress: bool) -> SegmentResult:  # fmt: skip
    """The streaming pass and the writing of every output (inside their atomic contexts)."""
    n_bands = len(texts)
    scope = opts.scope if len(grid) > 1 else "chip"  # one chip: the two scopes coincide
    t0 = time.perf_counter()
    regions: list[SceneRegion | None] = [None] * n_bands
    if scope == "scene":
        regions = list(coarse_regions(scene, predictor, texts, grid.chip, opts.threshold))
    timings["coarse_pass"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = [predictor.encode(t, drop_position=scope == "scene") for t in texts]
    timings["encode"] = time.perf_counter() - t0

    with contextlib.ExitStack() as stack:
        finals = outs.finals()
        tmp = {p: stack.enter_context(atomic_output(p, overwrite=opts.overwrite)) for p in finals}
        scratch = None
        if opts.cog:  # COGs are copied from a finished GeoTIFF, built in a hidden scratch folder
            folder = tempfile.TemporaryDirectory(prefix=".fiacli-", dir=finals[0].parent)
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
                )  # fmt: skip
                stack.callback(w.abort)
                writers[kind] = (w, tmp[path])
        wants_polygons = bool(outs.vectors) or outs.preview is not None
        polygons = None
        if wants_polygons:
            polygons = stack.enter_context(PolygonWriter(
                grid.width, texts, finals[0].parent, transform=scene.transform, crs=scene.crs,
                min_area=opts.min_area, simplify=opts.simplify,
            ))  # fmt: skip
        sinks = _Sinks(
            n_bands, opts.threshold, writers.get("mask", (None,))[0],
            writers.get("probabilities", (None,))[0], polygons,
            RowOpening(opts.open_px) if opts.open_px > 0 else None,
        )  # fmt: skip
        counts = _stream(scene, grid, predictor, encoded, regions, sinks, opts, timings,
                         show_progress=show_progress)  # fmt: skip

        t0 = time.perf_counter()
        for kind, (w, final_tmp) in writers.items():
            resampling = Resampling.nearest if kind == "mask" else Resampling.average
            w.close(overview_resampling=None if scratch else resampling)
            if scratch:
                translate_to_cog(w.path, final_tmp, mask=kind == "mask")
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
        result = SegmentResult(
            scene={**scene.describe(), "valid_pixels": sinks.valid_pixels},
            expressions=texts,
            outputs=outs.as_dict(),
            chips=counts,
            per_expression=[
                {"expression": t, "foreground_pixels": int(f), "polygons": n}
                for t, f, n in zip(texts, sinks.foreground, n_polygons, strict=True)
            ],
            timings_s={k: round(v, 4) for k, v in timings.items()},
            options=record,
            warnings=list(scene.warnings),
        )
        if outs.manifest is not None:
            _write_manifest(outs.manifest, result, model_info, overwrite=opts.overwrite)
    return result


def _stream(scene: Scene, grid: ChipGrid, predictor: ChipPredictor, encoded: list[Any],
            regions: list[SceneRegion | None], sinks: _Sinks, opts: SegmentOptions,
            timings: dict[str, float], *, show_progress: bool) -> dict[str, int]:  # fmt: skip
    """Read, predict, blend and emit rows, chip row after chip row."""
    stitcher = RowStitcher(grid, len(encoded), opts.blend)  # type: ignore[arg-type]
    counts = {"total": len(grid), "predicted": 0, "skipped_nodata": 0, "skipped_outside": 0}
    model_s = stitch_s = 0.0
    bar = rich_progress()
    bar.disable = bar.disable or not show_progress
    with bar, ChipReader(scene, grid, opts.batch_size) as reader:
        task = bar.add_task("segmenting", total=len(grid))
        for batch in reader:
            # each expression runs on the chips with data (in scene scope: inside its region)
            preds: list[dict[int, np.ndarray]] = []
            for enc, region in zip(encoded, regions, strict=True):
                wanted = [
                    k for k, s in enumerate(batch.slot)
                    if s >= 0 and (region is None or region.window(batch.chips[k]).any())
                ]  # fmt: skip
                out: dict[int, np.ndarray] = {}
                if wanted:
                    t0 = time.perf_counter()
                    chips = batch.pixels[[batch.slot[k] for k in wanted]]
                    p = np.asarray(predictor.predict(chips, enc))
                    model_s += time.perf_counter() - t0
                    if p.shape != (len(wanted), *chips.shape[2:]):
                        raise FiacliError(
                            f"the model returned {p.shape} for chips {chips.shape}; "
                            "expected one probability map per chip, chip-sized"
                        )
                    out = dict(zip(wanted, p, strict=True))
                preds.append(out)
            t0 = time.perf_counter()
            for k, chip in enumerate(batch.chips):
                probs = None
                if batch.slot[k] < 0:
                    counts["skipped_nodata"] += 1
                else:
                    probs = np.zeros((len(encoded), chip.height, chip.width), np.float32)
                    for e, region in enumerate(regions):
                        if k in preds[e]:
                            p = np.nan_to_num(preds[e][k][: chip.height, : chip.width])
                            probs[e] = np.clip(p, 0, 1) * (
                                1 if region is None else region.window(chip)
                            )
                    ran = any(k in pe for pe in preds)
                    counts["predicted" if ran else "skipped_outside"] += 1
                ready = stitcher.add(chip, probs, batch.valid[k])
                if ready is not None:
                    sinks.write(ready[1], last=chip.row == grid.shape[0] - 1)
            stitch_s += time.perf_counter() - t0
            bar.advance(task, len(batch.chips))
    timings.update(read=reader.read_seconds, wait_for_read=reader.wait_seconds, model=model_s,
                   stitch_and_write=stitch_s)  # fmt: skip
    return counts


def _write_manifest(path: Path, result: SegmentResult, model_info: dict[str, Any] | None, *,
                    overwrite: bool) -> None:  # fmt: skip
    """Provenance beside the outputs: model, expressions, options, fiacli version."""
    payload = {
        "fiacli_version": __version__,
        "command": "segment",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_info,
        **result.to_dict(),
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")

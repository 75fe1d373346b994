"""Referring segmentation inside areas of interest: every AOI feature is one picture.

A referring expression names one object in *a picture*; the datasets FIANet learned from are
pictures of about 800² px shown to the model at 480². On a large scene the picture a user means
is a place: a bounding box, a parcel, a harbour. Here each AOI feature is answered on its own,
so "the white van on the left" means the left of *that feature's* bounding box:

* **Fits the view** (the longer side of the feature's pixel window is at most
  :data:`FIT_FACTOR` × the chip, 960 px at 480): the window is read once and resized so that
  its longer side is the chip, keeping its aspect ratio, with the bilinear, antialiased resize
  of training (``fiacli.training.transforms.resize_image``; GDAL's bilinear downsampling, read
  from full resolution, is the same filter); a window that is not square is centred in the
  chip with nodata around it, so the middle of the picture is the middle of the feature.
  Upsampling is capped at :data:`MAX_UPSCALE`. The scale is recorded in the manifest.
* **Larger**: the window is a scene of its own at full resolution: chips in chip scope, or the
  coarse pass over the feature (not the whole scene) in scene scope. Chips farther than one
  chip from the polygon are not read (nodata to the pipeline), so a thin diagonal harbour
  costs what it covers, not its bounding box.

The picture is a VRT over the scene (:func:`fiacli.geo.aoi.window_vrt`) handed to
:func:`fiacli.app.pipeline.segment_raster`; its results are brought back to the scene's grid
(nearest for the mask, bilinear for probabilities), clipped to the feature's polygon and merged:
polygons are cut with the polygon and tagged with ``aoi_id`` and the ``keep_fields``; rasters
cover the union of the AOIs in the scene's grid (255/masked elsewhere, written sparse) or, with
``crop``, only its bounding window. Where AOIs overlap, a pixel is the object if any says so.
Only the windows of the AOIs are read and run. With ``resolution`` the scene's grid is the
resampled one (:func:`fiacli.geo.raster.open_scene`): windows are cut from that grid, outputs
are on it, and each VRT reads the source file at that resolution (bilinear).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window
from scipy import ndimage

from fiacli import __version__
from fiacli.app.pipeline import ChipPredictor, SegmentResult, segment_raster, write_manifest
from fiacli.app.segment_options import (
    Outputs,
    SegmentOptions,
    check_existing,
    clean_expressions,
    plan_outputs,
)
from fiacli.core.console import progress as rich_progress
from fiacli.core.console import warn
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import atomic_output, refuse_overwriting_inputs, scratch_folder
from fiacli.geo.aoi import (
    Area,
    AreaSet,
    CoarseMask,
    PixelWindow,
    Rect,
    bbox_area,
    clip_to_scene,
    load_areas,
    parse_bbox,
    parse_fields,
    pixel_window,
    scene_footprint,
    window_vrt,
)
from fiacli.geo.raster import TILE, open_scene, translate_to_cog
from fiacli.geo.vectorize import area_m2, write_vectors

FIT_FACTOR = 2.0  # a window fits the view when its longer side is at most this many chips
MAX_UPSCALE = 8.0  # a tiny feature is enlarged at most this much (then centred, nodata around)
COARSE_CELL = 16  # pixels a cell of the polygon mask that skips chips of large features
MASK_BELOW = 0.8  # ... made only when the polygon covers less than this share of its window
STRIP = 1024  # rows of a large feature's results brought back at a time
DENSE_SHARE = 0.25  # rasters whose AOIs touch at least this share of the tiles get overviews
RESERVED = ("aoi_id", "expression", "area_m2", "pixels", "mean_prob", "geometry")
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class AreaOptions:
    """Where a segment run looks: the ``fiacli segment`` AOI options, by the same names.

    ``aoi``: a vector file, or from Python a GeoDataFrame, GeoSeries, shapely geometry or a
    list of them; ``bbox``: ``"minx,miny,maxx,maxy"`` or four numbers. ``aoi_crs`` is the CRS
    of features that carry none (shapely geometries default to the scene's CRS).
    """

    aoi: Any = None
    aoi_layer: str | None = None
    aoi_where: str | None = None
    aoi_crs: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    expression_field: str | None = None
    keep_fields: tuple[str, ...] = ()
    crop: bool = False

    def __post_init__(self) -> None:
        if self.bbox is not None:
            object.__setattr__(self, "bbox", parse_bbox(self.bbox))
        object.__setattr__(self, "keep_fields", parse_fields(self.keep_fields))
        if isinstance(self.aoi, str):
            object.__setattr__(self, "aoi", Path(self.aoi) if "://" not in self.aoi else self.aoi)

    @classmethod
    def build(cls, base: AreaOptions | None = None, /, **changes: Any) -> AreaOptions:
        """``base`` (default: no AOI) with ``changes``, checked; unknown names are refused."""
        unknown = sorted(set(changes) - set(AREA_FIELD_NAMES))
        if unknown:
            raise UsageError(f"unknown area option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(AREA_FIELD_NAMES)}")  # fmt: skip
        options = replace(base, **changes) if base is not None else cls(**changes)
        options.check()
        return options

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AreaOptions:
        """The fields found in ``values`` (e.g. a command's parameters), other keys ignored."""
        return cls.build(**{n: values[n] for n in AREA_FIELD_NAMES if n in values})

    @property
    def active(self) -> bool:
        """Whether the run is restricted to areas of interest."""
        return self.aoi is not None or self.bbox is not None

    def check(self) -> None:
        """Refuse options that do not fit together (usage errors, exit code 2)."""
        if self.aoi is not None and self.bbox is not None:
            raise UsageError("give --aoi or --bbox, not both")
        file_only = {"aoi_layer": self.aoi_layer, "aoi_where": self.aoi_where,
                     "expression_field": self.expression_field,
                     "keep_fields": self.keep_fields or None, "aoi_crs": self.aoi_crs}  # fmt: skip
        for name, value in file_only.items():
            if value is not None and self.aoi is None:
                raise UsageError(f"--{name.replace('_', '-')} needs --aoi")
        if self.bbox_crs is not None and self.bbox is None:
            raise UsageError("--bbox-crs needs --bbox")
        if self.crop and not self.active:
            raise UsageError("--crop needs --aoi or --bbox")
        for name in ("aoi_crs", "bbox_crs"):
            value = getattr(self, name)
            if value is not None:
                from pyproj import CRS

                try:
                    CRS.from_user_input(value)
                except Exception:
                    raise UsageError(f"--{name.replace('_', '-')}: unknown CRS {value!r}") from None
        # GeoPackage column names ignore case, and its FID column is its own
        clash = sorted(f for f in self.keep_fields if f.lower() in {*RESERVED, "fid"})
        if clash:
            raise UsageError(f"--keep-fields {clash[0]!r}: the output already has a column of "
                             "that name")  # fmt: skip
        if self.expression_field is not None and not self.expression_field.strip():
            raise UsageError("--expression-field needs an attribute name")

    def record(self) -> dict[str, Any]:
        """What the manifest stores about where the run looked."""
        aoi = self.aoi
        if aoi is not None and not isinstance(aoi, (str, os.PathLike)):
            aoi = f"<{type(aoi).__name__}>"
        return {"aoi": None if aoi is None else str(aoi), "aoi_layer": self.aoi_layer,
                "aoi_where": self.aoi_where, "aoi_crs": self.aoi_crs,
                "bbox": list(self.bbox) if self.bbox else None, "bbox_crs": self.bbox_crs,
                "expression_field": self.expression_field, "keep_fields": list(self.keep_fields),
                "crop": self.crop}  # fmt: skip


AREA_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(AreaOptions))


@dataclass
class AreaPlan:
    """What :func:`preflight_areas` established, before any model is loaded."""

    scene: str
    expressions: list[str]  # those every feature answers (-e), after its own
    outputs: Outputs
    areas: list[Area]
    notes: list[str]  # about the AOIs themselves (repaired geometries …)
    options: SegmentOptions
    area_options: AreaOptions
    source: str
    grid: tuple[Affine, int, int] | None = None  # the scene's transform, width and height
    outside: list[str] = field(default_factory=list)  # the features outside the scene

    @property
    def slots(self) -> list[str]:
        """Band names of the rasters (see :func:`area_slots`)."""
        return area_slots(self.area_options, self.expressions)

    def window_sizes(self) -> list[tuple[int, int]]:
        """Each feature's window in the scene's grid, as (height, width)."""
        assert self.grid is not None
        wins = [pixel_window(a.geometry, *self.grid) for a in self.areas]
        return [(w.height, w.width) for w in wins if w is not None]


def area_texts(area: Area, expressions: Sequence[str]) -> list[str]:
    """What one feature answers: its own expression (``expression_field``), then ``expressions``
    (those every feature answers)."""
    return ([area.expression] if area.expression is not None else []) + list(expressions)


def area_bounds(area: Area) -> list[float]:
    """A feature's bounds in the scene's CRS, as its manifest record lists them."""
    return [round(v, 6) for v in area.geometry.bounds]


def area_slots(area_options: AreaOptions, expressions: Sequence[str]) -> list[str]:
    """Band names of an AOI run's rasters, as its manifest lists them: one per expression every
    feature answers, after the features' own (``expression_field``) when they bring one."""
    field_name = area_options.expression_field
    own = [f"expression from field {field_name!r}"] if field_name else []
    return own + list(expressions)


def estimated_chips(window_sizes: Sequence[tuple[int, int]], chip: int, overlap: int) -> int:
    """About how many chips the features of these windows take, for progress: one for a
    feature that fits the view, its window's chips for the others."""
    from fiacli.app.scaleout import chips_of

    return sum(1 if max(h, w) <= FIT_FACTOR * chip else chips_of(h, w, chip, overlap)
               for h, w in window_sizes)  # fmt: skip


def check_area_source(area_options: AreaOptions) -> None:
    """Read the AOIs once, before a run over many scenes: what is wrong with them (the file does
    not open, has no CRS, ``--aoi-where`` selects nothing, an attribute is missing) fails the
    run before any scene (their warnings come with each scene's plan)."""
    import geopandas as gpd

    a = area_options
    if not isinstance(a.aoi, (str, os.PathLike, gpd.GeoDataFrame, gpd.GeoSeries)):
        return  # --bbox, or shapely geometries (in each scene's CRS): checked with each scene
    load_areas(a.aoi, scene_crs=None, layer=a.aoi_layer, where=a.aoi_where, aoi_crs=a.aoi_crs,
               expression_field=a.expression_field, keep_fields=a.keep_fields)  # fmt: skip


class NoAreaInScene(FiacliError):
    """No area of interest overlaps the scene (over many scenes: that scene has no work)."""


@dataclass
class AreaResult(SegmentResult):
    """A segment run over areas of interest: the totals and one record per feature."""

    areas: list[dict[str, Any]] = field(default_factory=list)


def preflight_areas(
    scene: PathLike,
    expressions: str | Sequence[str],
    output: PathLike | Sequence[PathLike],
    options: SegmentOptions,
    area_options: AreaOptions,
    *,
    inputs: Sequence[PathLike | None] = (),
    loaded: dict[str, AreaSet] | None = None,
) -> AreaPlan:
    """Every check of an AOI run that needs no model: options, outputs, the scene, the AOIs.

    No output may be one of the inputs (the scene and GDAL's files of it, an AOI file and its
    sidecars, ``inputs``: the model, an expressions file), -f or not. ``loaded``: the AOIs
    already read, by the scene CRS they were reprojected to (a run over many scenes reads the
    file once per CRS); :class:`NoAreaInScene` when none overlaps the scene."""
    options.check()
    area_options.check()
    if not area_options.active:
        raise UsageError("no area of interest given: pass --aoi FILE or --bbox")
    given = [expressions] if isinstance(expressions, str) else list(expressions)
    # with --expression-field, each feature brings its own: -e ones are then optional
    texts = clean_expressions(given) if given or not area_options.expression_field else []
    aoi_file = area_options.aoi if isinstance(area_options.aoi, (str, os.PathLike)) else None
    # an output that is an input is refused before one that exists: -f would not help it
    outputs = plan_outputs(output, replace(options, overwrite=True))
    refuse_overwriting_inputs(outputs.every(), [scene, aoi_file, *inputs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = open_scene(scene, bands=options.bands, resolution=options.resolution,
                           stretch=False,
                           allow_ungeoreferenced=options.allow_ungeoreferenced)  # fmt: skip
    with probe:
        refuse_overwriting_inputs(outputs.every(), probe.src.files)
        if probe.crs is None:
            raise FiacliError(f"{scene} has no CRS; areas of interest need a georeferenced scene")
        crs, transform, width, height = probe.crs, probe.transform, probe.width, probe.height
    check_existing(outputs, overwrite=options.overwrite)
    a = area_options
    found = None if loaded is None else loaded.get(crs.to_wkt())
    if found is None:
        if a.bbox is not None:
            found = bbox_area(a.bbox, scene_crs=crs, bbox_crs=a.bbox_crs)
        else:
            found = load_areas(a.aoi, scene_crs=crs, layer=a.aoi_layer, where=a.aoi_where,
                               aoi_crs=a.aoi_crs, expression_field=a.expression_field,
                               keep_fields=a.keep_fields)  # fmt: skip
        if loaded is not None:
            loaded[crs.to_wkt()] = found
    kept, outside = clip_to_scene(found.areas, scene_footprint(transform, width, height))
    kept = [k for k in kept if pixel_window(k.geometry, transform, width, height) is not None]
    if not kept:
        n = len(found.areas)
        foot = scene_footprint(transform, width, height).bounds
        where = f"the scene covers {','.join(f'{v:.10g}' for v in foot)} in {crs.to_string()}"
        what = ("the --bbox" if a.bbox is not None
                else f"{found.source} ({n} feature{'s' if n != 1 else ''})")  # fmt: skip
        raise NoAreaInScene(f"{what} does not overlap {scene}: {where}")
    return AreaPlan(str(scene), texts, outputs, kept, found.notes, options, a, found.source,
                    (transform, width, height), outside)  # fmt: skip


def segment_areas(
    scene: PathLike,
    expressions: str | Sequence[str],
    output: PathLike | Sequence[PathLike],
    options: SegmentOptions | None = None,
    areas: AreaOptions | AreaPlan | None = None,
    *,
    predictor: ChipPredictor,
    model_info: dict[str, Any] | None = None,
    show_progress: bool = False,
    **changes: Any,
) -> AreaResult:
    """Segment ``expressions`` inside each area of interest of ``scene``; write ``output``.

    ``areas`` is an :class:`AreaOptions` (or the :class:`AreaPlan` of :func:`preflight_areas`);
    keyword ``changes`` may name fields of either options class. Outputs are those of
    :func:`fiacli.app.pipeline.segment_raster`, restricted to the AOIs (see the module
    docstring); vectors also carry ``aoi_id`` and the ``keep_fields``.
    """
    if isinstance(areas, AreaPlan):
        if changes or options is not None:
            raise UsageError("an AreaPlan already holds its options; pass it alone")
        plan = areas
    else:
        area_changes = {k: v for k, v in changes.items() if k in AREA_FIELD_NAMES}
        seg_changes = {k: v for k, v in changes.items() if k not in AREA_FIELD_NAMES}
        opts = SegmentOptions.build(options, **seg_changes)
        aopts = AreaOptions.build(areas, **area_changes)
        plan = preflight_areas(scene, expressions, output, opts, aopts)
    return run_areas(plan, predictor=predictor, model_info=model_info,
                     show_progress=show_progress)  # fmt: skip


@dataclass
class _Window:
    """One feature's picture: where it sits in the scene and how it is shown to the model."""

    area: Area
    window: PixelWindow  # in the scene's grid
    fits: bool
    scale: float  # picture pixels per scene pixel
    picture: tuple[int, int]  # the VRT's size
    content: PixelWindow  # where the window lands in the picture


def _layout(area: Area, window: PixelWindow, chip: int) -> _Window:
    w, h = window.width, window.height
    if max(w, h) <= FIT_FACTOR * chip:
        scale = min(chip / max(w, h), MAX_UPSCALE)
        cw, ch = max(1, min(chip, round(w * scale))), max(1, min(chip, round(h * scale)))
        content = PixelWindow((chip - cw) // 2, (chip - ch) // 2, cw, ch)
        return _Window(area, window, True, scale, (chip, chip), content)
    return _Window(area, window, False, 1.0, (w, h), PixelWindow(0, 0, w, h))


class _Composite:
    """A raster in the output window built from feature results: an uncompressed, sparse
    scratch GeoTIFF updated in place (features may overlap), copied to the final compressed
    GeoTIFF tile by tile at the end, empty tiles left out."""

    def __init__(self, path: Path, kind: str, out: PixelWindow, count: int, transform: Affine,
                 crs: Any) -> None:  # fmt: skip
        self.kind, self.out, self.count = kind, out, count
        self.transform = transform @ Affine.translation(out.col, out.row)
        self.crs = crs
        bands = count if kind == "mask" else count + 1  # probabilities: + a coverage band
        self.ds = rasterio.open(
            path, "w+", driver="GTiff", width=out.width, height=out.height, count=bands,
            dtype="uint8", crs=crs, transform=self.transform,
            nodata=255 if kind == "mask" else None, tiled=True, blockxsize=TILE,
            blockysize=TILE, SPARSE_OK=True, BIGTIFF="IF_SAFER",
        )  # fmt: skip
        self.tiles: set[tuple[int, int]] = set()  # (row, column) of the tiles written to

    def add(self, window: PixelWindow, data: np.ndarray, keep: np.ndarray) -> None:
        """Merge ``data`` (bands, h, w) where ``keep`` (h, w), at scene-grid ``window``."""
        if not keep.any():
            return
        win = Window(window.col - self.out.col, window.row - self.out.row, window.width,
                     window.height)  # fmt: skip
        cur = self.ds.read(window=win)
        if self.kind == "mask":
            new = np.where(keep, data, np.uint8(255))
            merged = np.where(new == 255, cur, np.where(cur == 255, new, np.maximum(cur, new)))
        else:
            covered = cur[-1] > 0
            probs = np.where(covered, np.maximum(cur[:-1], data), data)
            coverage = np.where(keep | covered, np.uint8(255), np.uint8(0))
            merged = np.concatenate([np.where(keep, probs, cur[:-1]), coverage[None]])
        self.ds.write(merged.astype(np.uint8), window=win)
        rows = range(int(win.row_off) // TILE, (int(win.row_off) + window.height - 1) // TILE + 1)
        cols = range(int(win.col_off) // TILE, (int(win.col_off) + window.width - 1) // TILE + 1)
        self.tiles.update((r, c) for r in rows for c in cols)

    def finish(self, path: Path, descriptions: Sequence[str], tags: dict[str, str], *,
               overviews: bool) -> None:  # fmt: skip
        """Write the final GeoTIFF at ``path``: DEFLATE tiles, only those written to (the rest,
        and their overviews, are sparse: no bytes in the file, nodata when read)."""
        self.ds.close()
        profile = dict(driver="GTiff", width=self.out.width, height=self.out.height,
                       count=self.count, dtype="uint8", crs=self.crs, transform=self.transform,
                       nodata=255 if self.kind == "mask" else None, tiled=True,
                       blockxsize=TILE, blockysize=TILE, compress="deflate", predictor=2,
                       SPARSE_OK=True, BIGTIFF="IF_SAFER")  # fmt: skip
        env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, SPARSE_OK_OVERVIEW="ON")
        with env, rasterio.open(self.ds.name) as src, rasterio.open(path, "w", **profile) as dst:
            for i, text in enumerate(descriptions, 1):
                dst.set_band_description(i, text)
            dst.update_tags(**tags)
            for r, c in sorted(self.tiles):
                row, col = r * TILE, c * TILE
                win = Window(col, row, min(TILE, self.out.width - col),
                             min(TILE, self.out.height - row))  # fmt: skip
                block = src.read(window=win)
                if self.kind == "mask":
                    if (block == 255).all():
                        continue
                    dst.write(block, window=win)
                else:
                    if not block[-1].any():
                        continue
                    dst.write(block[:-1], window=win)
                    dst.write_mask(block[-1], window=win)
            factors = []
            while max(self.out.width, self.out.height) / 2 ** (len(factors) + 1) >= TILE / 2:
                factors.append(2 ** (len(factors) + 1))
            # a sparse raster needs none: a zoomed-out read skips its empty tiles, and computing
            # them would scan the whole grid (seconds at 20,000², more than the AOIs cost)
            total = -(-self.out.width // TILE) * -(-self.out.height // TILE)
            if overviews and factors and len(self.tiles) >= DENSE_SHARE * total:
                kind = Resampling.nearest if self.kind == "mask" else Resampling.average
                dst.build_overviews(factors, kind)


def run_areas(
    plan: AreaPlan,
    *,
    predictor: ChipPredictor,
    model_info: dict[str, Any] | None = None,
    show_progress: bool = False,
    announce_notes: bool = True,
) -> AreaResult:
    """Run every area of ``plan`` and write its outputs (atomically; nothing left on failure).

    Its notes go to the manifest, and to stderr unless ``announce_notes`` is False (a run over
    many scenes says them once)."""
    t_start = time.perf_counter()
    opts, outs = plan.options, plan.outputs
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_scene(plan.scene, bands=opts.bands, resolution=opts.resolution) as scene:
        for note in [*scene.warnings, *(plan.notes if announce_notes else []), *plan.outside]:
            warn(note)
        chip = int(opts.chip or predictor.image_size)
        grid = (scene.transform, scene.width, scene.height)
        layouts = []
        for area in plan.areas:
            window = pixel_window(area.geometry, *grid)
            assert window is not None  # preflight dropped the others
            layouts.append(_layout(area, window, chip))
        union = layouts[0].window
        for lay in layouts[1:]:
            union = union.union(lay.window)
        out = union if plan.area_options.crop else PixelWindow(0, 0, scene.width, scene.height)
        timings["open"] = time.perf_counter() - t0
        with contextlib.ExitStack() as stack:
            finals = outs.finals()
            tmp = {p: stack.enter_context(atomic_output(p, overwrite=opts.overwrite))
                   for p in finals}  # fmt: skip
            folder = scratch_folder(finals[0].parent, "areas")
            scratch = Path(stack.enter_context(folder))
            runner = _Runner(plan, scene, predictor, scratch, out, chip)
            stack.callback(runner.close)
            bar = rich_progress()
            bar.disable = bar.disable or not show_progress
            t0 = time.perf_counter()
            with bar:
                task = bar.add_task("areas of interest", total=len(layouts))
                for k, lay in enumerate(layouts):
                    runner.run(k, lay)
                    bar.advance(task)
            timings["areas"] = time.perf_counter() - t0
            result = runner.finish(tmp, timings, t_start, union)
            # before the outputs are renamed (as segment_raster): a run interrupted between
            # renames leaves its manifest, so running it again may replace its outputs
            if outs.manifest is not None:
                write_manifest(outs.manifest, result, model_info, overwrite=opts.overwrite)
    return result


class _Runner:
    """The state of one AOI run: the scratch folder, the raster composites, the polygons."""

    def __init__(self, plan: AreaPlan, scene: Any, predictor: ChipPredictor, scratch: Path,
                 out: PixelWindow, chip: int) -> None:  # fmt: skip
        self.plan, self.scene, self.predictor = plan, scene, predictor
        self.scratch, self.out, self.chip = scratch, out, chip
        outs = plan.outputs
        self.source = _source_name(plan.scene)
        self.masked = not all(  # the VRTs read the source file itself, not a WarpedVRT over it
            scene.src.mask_flag_enums[i - 1] == [MaskFlags.all_valid] for i in set(scene.indexes)
        )
        st = scene.stretch
        self.stretch = None if st is None else (st.lo.tolist(), st.hi.tolist())
        n = len(plan.slots)
        self.composites: dict[str, _Composite] = {}
        if outs.mask is not None:
            self.composites["mask"] = _Composite(scratch / "mask.tif", "mask", out, n,
                                                 scene.transform, scene.crs)  # fmt: skip
        if outs.probabilities is not None:
            self.composites["prob"] = _Composite(scratch / "prob.tif", "prob", out, n,
                                                 scene.transform, scene.crs)  # fmt: skip
        self.want_vectors = bool(outs.vectors) or outs.preview is not None
        self.frames: list[Any] = []
        self.records: list[dict[str, Any]] = []
        self.foreground = np.zeros(n, np.int64)
        self.polygons = np.zeros(n, np.int64)
        self.chips = {"total": 0, "predicted": 0, "skipped_nodata": 0, "skipped_outside": 0}
        self.model_s = 0.0
        px = scene.transform
        self.pixel_area = abs(px.a * px.e - px.b * px.d)
        # grid pixels -> source pixels: a scale (--resolution keeps origin and orientation)
        self.resampled = scene.dataset is not scene.src
        self.to_source = (~scene.src.transform @ scene.transform if self.resampled
                          else Affine.identity())  # fmt: skip

    def source_rect(self, win: PixelWindow) -> Rect:
        """A window of the scene's grid in the source file's pixels (they differ with
        --resolution: the grid is then the resampled one)."""
        m = self.to_source
        values = (win.col * m.a + m.c, win.row * m.e + m.f, win.width * m.a, win.height * m.e)
        return Rect(*(round(v, 9) for v in values))  # no float noise on whole pixels

    def close(self) -> None:
        for comp in self.composites.values():
            if not comp.ds.closed:
                comp.ds.close()

    def run(self, k: int, lay: _Window) -> None:
        t0 = time.perf_counter()
        opts, area, scene = self.plan.options, lay.area, self.scene
        folder = self.scratch / f"area-{k}"
        folder.mkdir()
        win = lay.window
        w, h = win.width, win.height
        cw, ch = lay.content.width, lay.content.height
        to_scene = scene.transform @ Affine.translation(win.col, win.row)
        transform = (
            to_scene
            @ Affine.scale(w / cw, h / ch)
            @ Affine.translation(-lay.content.col, -lay.content.row)
        )
        coarse = None if lay.fits else self._coarse_mask(folder, area, win, to_scene)
        vrt = folder / f"{Path(self.plan.scene).stem}-area-{k}.vrt"
        vrt.write_text(window_vrt(
            self.source, crs_wkt=scene.crs.to_wkt(), indexes=scene.indexes,
            src=self.source_rect(win),
            size=lay.picture, dst=lay.content, transform=transform, stretch=self.stretch,
            resampling="bilinear" if lay.fits or self.resampled else "nearest",
            no_overviews=lay.fits,
            source_masked=self.masked, coarse_mask=coarse,
        ), encoding="utf-8")  # fmt: skip
        texts = area_texts(area, self.plan.expressions)
        mask_path = folder / "mask.tif"
        prob_path = folder / "prob.tif" if "prob" in self.composites else None
        # GeoParquet: the quickest of the formats to write and read back (a GeoPackage costs
        # more than the chips of a small feature)
        vec_path = folder / "polygons.parquet" if self.want_vectors else None
        # the run's own options, less what is done here for the whole run (outputs, clipping,
        # measuring, reprojecting) and what the VRT already did (bands)
        sub = SegmentOptions.build(
            opts, probabilities=prob_path, preview=None, cog=False, min_area=0.0, simplify=0.0,
            open_px=round(opts.open_px * lay.scale), dst_crs=None, bands=None, resolution=None,
            allow_ungeoreferenced=False, overwrite=True, manifest=False,
        )  # fmt: skip
        outputs = [mask_path] + ([vec_path] if vec_path else [])
        result = segment_raster(vrt, texts, outputs, sub, predictor=self.predictor)
        for key in self.chips:
            self.chips[key] += int(result.chips.get(key, 0))
        self.model_s += float(result.timings_s.get("model", 0.0))
        fg = self._rasters(lay, mask_path, prob_path, to_scene)
        n_polys = self._vectors(k, area, texts, vec_path) if vec_path else None
        self.foreground += fg
        if n_polys is not None:
            self.polygons += n_polys
        shutil.rmtree(folder, ignore_errors=True)
        self.records.append(
            {
                "id": area.id,
                "expressions": texts,
                "fields": area.fields,
                "bounds": area_bounds(area),
                "window": win.as_list(),
                "picture": {
                    "mode": "one picture" if lay.fits else "scene of its own",
                    "size": list(lay.picture),
                    "scale": round(lay.scale, 6),
                    "resampling": "bilinear, antialiased (as in training)" if lay.fits else None,
                    "skipped_far_from_polygon": coarse is not None,
                },
                "effective_scope": result.options.get("effective_scope"),
                "chips": result.chips,
                "per_expression": [
                    {
                        "expression": t,
                        "foreground_pixels": int(f),
                        "polygons": None if n_polys is None else int(p),
                    }
                    for t, f, p in zip(
                        texts, fg, n_polys if n_polys is not None else fg, strict=True
                    )
                ],  # fmt: skip
                "seconds": round(time.perf_counter() - t0, 4),
            }
        )

    def _coarse_mask(self, folder: Path, area: Area, win: PixelWindow,
                     to_scene: Affine) -> CoarseMask | None:  # fmt: skip
        """Cells within one chip of the polygon, for a large feature the polygon fills poorly."""
        polygon_px = area.geometry.area / self.pixel_area
        if polygon_px >= MASK_BELOW * win.width * win.height:
            return None
        cell = COARSE_CELL
        cols, rows = -(-win.width // cell), -(-win.height // cell)
        transform = to_scene @ Affine.scale(cell)
        near = rasterio.features.rasterize([(area.geometry, 1)], out_shape=(rows, cols),
                                           transform=transform, all_touched=True,
                                           dtype="uint8").astype(bool)  # fmt: skip
        grow = -(-self.chip // cell) + 1
        near = ndimage.binary_dilation(near, np.ones((3, 3), bool), iterations=grow)
        path = folder / "near.tif"
        profile = dict(driver="GTiff", width=cols, height=rows, count=1, dtype="uint8",
                       crs=self.scene.crs, transform=transform)  # fmt: skip
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(np.where(near, 255, 0).astype(np.uint8)[None])
        return CoarseMask(str(path), cell, cols, rows)

    def _rasters(self, lay: _Window, mask_path: Path, prob_path: Path | None,
                 to_scene: Affine) -> np.ndarray:  # fmt: skip
        """Bring the feature's results back to the scene grid, clip, merge; count foreground."""
        win, c = lay.window, lay.content
        n = len(area_texts(lay.area, self.plan.expressions))
        fg = np.zeros(n, np.int64)
        step = win.height if lay.fits else STRIP
        with rasterio.open(mask_path) as mds, contextlib.ExitStack() as stack:
            pds = stack.enter_context(rasterio.open(prob_path)) if prob_path else None
            for y in range(0, win.height, step):
                sh = min(step, win.height - y)
                part = PixelWindow(win.col, win.row + y, win.width, sh)
                if lay.fits:
                    src, shape = Window(c.col, c.row, c.width, c.height), (n, sh, win.width)
                else:
                    src, shape = Window(0, y, win.width, sh), None
                mask = mds.read(window=src, out_shape=shape, resampling=Resampling.nearest)
                inside = rasterio.features.rasterize(
                    [(lay.area.geometry, 1)], out_shape=(sh, win.width),
                    transform=to_scene @ Affine.translation(0, y), dtype="uint8",
                ).astype(bool)  # fmt: skip
                fg += ((mask == 1) & inside).sum(axis=(1, 2))
                if "mask" in self.composites:
                    self.composites["mask"].add(part, mask, inside)
                if pds is not None:
                    probs = pds.read(window=src, out_shape=shape, resampling=Resampling.bilinear)
                    mshape = None if shape is None else shape[1:]
                    valid = pds.read_masks(1, window=src, out_shape=mshape,
                                           resampling=Resampling.nearest) > 0  # fmt: skip
                    self.composites["prob"].add(part, probs, inside & valid)
        return fg

    def _vectors(self, k: int, area: Area, texts: list[str], path: Path) -> np.ndarray:
        """The feature's polygons cut to it, measured again, tagged; kept in memory."""
        import geopandas as gpd

        opts = self.plan.options
        frame = gpd.read_parquet(path)
        geoms = np.asarray(frame.geometry.values, dtype=object)
        cut = geoms.copy()
        if len(geoms):
            shapely.prepare(area.geometry)
            inside = shapely.contains_properly(area.geometry, geoms)
            if not inside.all():
                cut[~inside] = shapely.intersection(geoms[~inside], area.geometry)
        parts, index = shapely.get_parts(cut, return_index=True)
        poly = shapely.get_type_id(parts) == 3  # polygons only: cuts can leave lines, points
        parts, index = parts[poly], index[poly]
        if len(parts):
            poly = shapely.area(parts) > 0
            parts, index = parts[poly], index[poly]
        src = frame.iloc[index].reset_index(drop=True)
        areas = area_m2(parts, self.scene.crs)
        keep = areas >= opts.min_area if opts.min_area > 0 else np.ones(len(parts), bool)
        pixels = np.rint(shapely.area(parts) / self.pixel_area).astype(np.int64)
        if opts.simplify > 0:
            parts = shapely.simplify(parts, opts.simplify, preserve_topology=True)
        columns: dict[str, Any] = {
            "aoi_id": [area.id] * int(keep.sum()),
            "expression": src["expression"].to_numpy()[keep],
            "area_m2": areas[keep],
            "pixels": pixels[keep],
            "mean_prob": src["mean_prob"].to_numpy()[keep],
        }
        for name, value in area.fields.items():
            columns[name] = [value] * int(keep.sum())
        slot = np.array([texts.index(t) for t in columns["expression"]], dtype=np.int64)
        columns["_slot"] = slot
        out = gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(parts[keep],
                               crs=self.scene.crs.to_wkt()))  # fmt: skip
        if len(out):
            self.frames.append(out)
        return np.bincount(slot, minlength=len(texts))

    def finish(self, tmp: dict[Path, Path], timings: dict[str, float], t_start: float,
               union: PixelWindow) -> AreaResult:  # fmt: skip
        plan, outs, opts = self.plan, self.plan.outputs, self.plan.options
        slots = plan.slots
        tags = {"fiacli_version": __version__, "expressions": json.dumps(slots),
                "aoi": json.dumps(plan.area_options.record())}  # fmt: skip
        t0 = time.perf_counter()
        for kind, path in (("mask", outs.mask), ("prob", outs.probabilities)):
            if path is None:
                continue
            comp = self.composites[kind]
            if opts.cog:
                plain = self.scratch / f"{kind}-final.tif"
                comp.finish(plain, slots, tags, overviews=False)
                translate_to_cog(plain, tmp[path], mask=kind == "mask")
            else:
                comp.finish(tmp[path], slots, tags, overviews=True)
        timings["finalize_rasters"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frame = self._all_polygons()
        written = frame.drop(columns="_slot")
        for path in outs.vectors:
            write_vectors(written, tmp[path], dst_crs=opts.dst_crs)
        timings["vectorize"] = time.perf_counter() - t0
        if outs.preview is not None:
            t0 = time.perf_counter()
            self._preview(tmp[outs.preview], frame, union)
            timings["preview"] = time.perf_counter() - t0
        timings["model"] = self.model_s
        timings["total"] = time.perf_counter() - t_start
        counts = self.polygons if self.want_vectors else [None] * len(slots)
        record = {**opts.record(), **plan.area_options.record(), "chip": self.chip,
                  "fit_factor": FIT_FACTOR, "max_upscale": MAX_UPSCALE}  # fmt: skip
        scene = self.scene
        return AreaResult(
            scene={**scene.describe(), "areas_window": union.as_list()},
            expressions=slots,
            outputs=outs.as_dict(),
            chips=self.chips,
            per_expression=[
                {
                    "expression": t,
                    "foreground_pixels": int(f),
                    "polygons": None if p is None else int(p),
                }
                for t, f, p in zip(slots, self.foreground, counts, strict=True)
            ],  # fmt: skip
            timings_s={k: round(v, 4) for k, v in timings.items()},
            options=record,
            warnings=[*scene.warnings, *plan.notes, *plan.outside],
            areas=self.records,
        )

    def _all_polygons(self) -> Any:
        import geopandas as gpd
        import pandas as pd

        if self.frames:
            return gpd.GeoDataFrame(pd.concat(self.frames, ignore_index=True),
                                    crs=self.scene.crs.to_wkt())  # fmt: skip
        ints = all(isinstance(a.id, int) for a in self.plan.areas)
        columns: dict[str, Any] = {"aoi_id": pd.Series([], dtype=np.int64 if ints else str),
                                   "expression": pd.Series([], dtype=str),
                                   "area_m2": pd.Series([], dtype=float),
                                   "pixels": pd.Series([], dtype=np.int64),
                                   "mean_prob": pd.Series([], dtype=float)}  # fmt: skip
        for name in self.plan.area_options.keep_fields:
            columns[name] = pd.Series([], dtype=object)
        columns["_slot"] = pd.Series([], dtype=np.int64)
        return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=self.scene.crs.to_wkt()))

    def _preview(self, path: Path, frame: Any, union: PixelWindow) -> None:
        """The union of the AOIs with the polygons outlined, one colour per expression (or per
        band, when there are many), and the AOIs themselves."""
        import geopandas as gpd

        from fiacli.geo.preview import write_scene_preview

        every = self.plan.expressions
        texts = list(dict.fromkeys(t for a in self.plan.areas for t in area_texts(a, every)))
        if len(texts) <= 5:
            labels = texts
            frames = [frame[frame["expression"] == t] for t in texts]
        else:
            labels = self.plan.slots
            frames = [frame[frame["_slot"] == s] for s in range(len(labels))]
        n = len(self.plan.areas)
        aois = gpd.GeoDataFrame(geometry=gpd.GeoSeries([a.geometry for a in self.plan.areas],
                                                       crs=self.scene.crs.to_wkt()))  # fmt: skip
        labels = [*labels, f"area{'s' if n != 1 else ''} of interest ({n})"]
        vrt = self.scratch / f"{Path(self.plan.scene).stem}.vrt"
        transform = self.scene.transform @ Affine.translation(union.col, union.row)
        vrt.write_text(window_vrt(
            self.source, crs_wkt=self.scene.crs.to_wkt(), indexes=self.scene.indexes,
            src=self.source_rect(union), size=(union.width, union.height),
            dst=PixelWindow(0, 0, union.width, union.height), transform=transform,
            stretch=self.stretch, source_masked=self.masked,
            resampling="bilinear" if self.resampled else "nearest",
        ), encoding="utf-8")  # fmt: skip
        with open_scene(vrt) as view:
            write_scene_preview(path, view, [*frames, aois], labels,
                                name=f"{Path(self.plan.scene).name}, AOI window",
                                polygons=len(frame))  # fmt: skip


def _source_name(scene: str) -> str:
    """The scene as a VRT source: absolute for a local file, as given otherwise."""
    if scene.startswith("/vsi") or "://" in scene:
        return scene
    return str(Path(scene).resolve())


__all__ = [
    "AREA_FIELD_NAMES",
    "FIT_FACTOR",
    "MAX_UPSCALE",
    "AreaOptions",
    "AreaPlan",
    "AreaResult",
    "NoAreaInScene",
    "area_bounds",
    "area_slots",
    "area_texts",
    "check_area_source",
    "estimated_chips",
    "preflight_areas",
    "run_areas",
    "segment_areas",
]

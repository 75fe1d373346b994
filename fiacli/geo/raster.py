"""Raster input and output for ``fiacli segment``: scenes in, tiled GeoTIFFs out, window by window.

Reading turns any GDAL raster into what a chip model needs (3-band uint8 RGB plus a validity mask)
without ever holding the scene: band choice, a *scene-wide* contrast stretch for 16-bit/float data
(so a tile never looks different from its neighbour), nodata from the nodata value, mask band,
alpha band or NaN, and on-the-fly resampling through a WarpedVRT. Writing buffers rows only until a
whole row of 512-pixel tiles is complete, so every compressed tile is written exactly once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from fiacli.core.errors import FiacliError, UsageError
from fiacli.geo.read_errors import ReadGuard

# Fill for pixels the model must see but that carry no data (nodata, padding of small scenes):
# the ImageNet mean, which the model's own normalisation turns into exactly zero input.
FILL_RGB = (124, 116, 104)
# Pixels read to estimate the stretch; percentiles of 1 Mpx are stable to well under 1 DN.
STATS_PIXELS = 1 << 20
STATS_PERCENTILES = (2.0, 98.0)
TILE = 512
MAX_SIDE = 2**31 - 1  # pixels a side GDAL can address
# Compression of the rasters segment writes (chosen on bench/segment.py --only codecs figures:
# ZSTD writes masks and probabilities several times faster than DEFLATE, and smaller).
COMPRESS = "zstd"
COMPRESS_LEVEL = 1


def parse_bands(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,2,3"`` -> ``(1, 2, 3)``; 1-based like GDAL; one band or three."""
    if text is None or text == "":
        return None
    try:
        bands = tuple(int(b) for b in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UsageError(f"--bands must be band numbers like 1,2,3, not {text!r}") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise UsageError(f"--bands takes one or three 1-based band numbers, not {text!r}")
    return bands


def select_bands(ds: Any, bands: Sequence[int] | None) -> tuple[tuple[int, int, int], str | None]:
    """Which three bands feed the model, and a warning to show (or None).

    Default: the bands GDAL labels red/green/blue, else the first three non-alpha bands; a single
    band is repeated, because the model needs three channels and grey is better than nothing.
    """
    if ds.count == 0:
        subs = list(getattr(ds, "subdatasets", []) or [])
        hint = f"; open one of its subdatasets, e.g. {subs[0]}" if subs else ""
        raise FiacliError(f"{ds.name} has no raster bands{hint}")
    if bands is not None and max(bands) > ds.count:
        plural = "band" if ds.count == 1 else "bands"
        raise FiacliError(f"{ds.name} has {ds.count} {plural}; --bands asks for band {max(bands)}")
    if bands is not None:
        if len(bands) == 1:
            return (bands[0],) * 3, f"one band ({bands[0]}) given; repeating it as R, G and B"
        return (bands[0], bands[1], bands[2]), None
    interp = list(ds.colorinterp)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in rgb):
        return tuple(interp.index(c) + 1 for c in rgb), None  # type: ignore[return-value]
    data = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if len(data) >= 3:
        return (data[0], data[1], data[2]), None
    if len(data) == 1:
        return (data[0],) * 3, f"{ds.name} has a single band; repeating it as R, G and B"
    raise FiacliError(f"{ds.name} has {len(data)} data bands; choose three with --bands 1,2,2")


@dataclass(frozen=True)
class Stretch:
    """Linear map of each band's [lo, hi] onto 0..255, the same for every chip of a scene."""

    lo: np.ndarray
    hi: np.ndarray

    def apply(self, data: np.ndarray) -> np.ndarray:
        lo = self.lo.reshape(-1, 1, 1)
        scale = (255.0 / np.maximum(self.hi - self.lo, 1e-12)).reshape(-1, 1, 1)
        out = (data.astype(np.float32) - lo) * scale
        np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _sample(ds: Any, indexes: Sequence[int], max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (bands, n) and validity (n,) spread over the whole scene, cheaply.

    From the overviews (a decimated read uses them) when the file has any, or when the scene is
    small enough to read whole; otherwise from a regular 8x8 grid of 256-px windows, which costs
    64 small reads instead of decoding every block of a huge file.
    """
    uniq = sorted(set(indexes))
    small = ds.width * ds.height <= 4 * max_pixels
    if ds.overviews(uniq[0]) or small:
        f = max(1.0, math.sqrt(ds.width * ds.height / max_pixels))
        shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
        data = ds.read(uniq, out_shape=(len(uniq), *shape), resampling=Resampling.nearest)
        masks = ds.read_masks(uniq, out_shape=(len(uniq), *shape), resampling=Resampling.nearest)
        chunks, mchunks = [data.reshape(len(uniq), -1)], [masks.reshape(len(uniq), -1)]
    else:  # 8x8 windows, no larger than 1/8 of the scene so that they never overlap
        n = 8
        sx, sy = max(1, min(256, ds.width // n)), max(1, min(256, ds.height // n))
        chunks, mchunks = [], []
        for y in np.linspace(0, ds.height - sy, n).astype(int):
            for x in np.linspace(0, ds.width - sx, n).astype(int):
                w = Window(int(x), int(y), sx, sy)
                chunks.append(ds.read(uniq, window=w).reshape(len(uniq), -1))
                mchunks.append(ds.read_masks(uniq, window=w).reshape(len(uniq), -1))
    data = np.concatenate(chunks, axis=1)
    valid = np.concatenate(mchunks, axis=1).any(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    order = [uniq.index(i) for i in indexes]
    return data[order], valid


def scene_stretch(ds: Any, indexes: Sequence[int], *, max_pixels: int = STATS_PIXELS) -> Stretch:
    """Per-band 2nd/98th percentiles of the valid pixels of the whole scene."""
    data, valid = _sample(ds, indexes, max_pixels)
    if not valid.any():
        return Stretch(np.zeros(len(indexes)), np.ones(len(indexes)))
    lo, hi = np.percentile(data[:, valid].astype(np.float64), STATS_PERCENTILES, axis=1)
    return Stretch(lo, hi)


def _metres_per_unit(crs: Any, transform: Affine) -> tuple[float, float]:
    """Ground metres per CRS unit along x and y at the scene's origin (degrees in a lat/lon CRS)."""
    if crs.is_geographic:
        from pyproj import CRS, Geod

        geod: Geod = CRS.from_user_input(crs.to_wkt()).get_geod()
        lon, lat = transform.c, transform.f
        d = 1e-3
        return (
            geod.inv(lon, lat, lon + d, lat)[2] / d,
            geod.inv(lon, lat, lon, lat + d)[2] / d,
        )
    factor = crs.linear_units_factor[1]
    return factor, factor


@dataclass
class Scene:
    """An open scene that hands out model-ready chips; use as a context manager."""

    path: str
    src: Any
    dataset: Any  # src itself or a WarpedVRT over it
    indexes: tuple[int, int, int]
    stretch: Stretch | None
    georeferenced: bool
    warnings: list[str] = field(default_factory=list)
    _valid_cache: bool | None = field(default=None, repr=False)
    resolution: float | None = None  # the --resolution the WarpedVRT resamples to, if any
    # what a damaged window means (fiacli.geo.read_errors: fail naming it, or nodata); clones
    # share it, so the windows skipped by every reader thread are in one list
    read_guard: ReadGuard | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.read_guard is None:  # DEFLATE tiles are checked when read on their own grid
            self.read_guard = ReadGuard.for_dataset(
                self.path, self.src, check_blocks=self.dataset is self.src
            )

    @property
    def width(self) -> int:
        return self.dataset.width

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def transform(self) -> Affine:
        return self.dataset.transform if self.georeferenced else Affine.identity()

    @property
    def crs(self) -> Any:
        return self.dataset.crs if self.georeferenced else None

    def _finish(self, data: np.ndarray, masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        valid = np.ones(data.shape[1:], bool) if masks is None else masks.any(axis=0)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.isfinite(data).all(axis=0)
        rgb = data if self.stretch is None else self.stretch.apply(data)
        if not valid.all():
            rgb = rgb.copy() if rgb is data else rgb
            rgb[:, ~valid] = np.asarray(FILL_RGB, np.uint8)[:, None]
        return rgb, valid

    def _all_valid(self) -> bool:
        """No nodata, mask or alpha on the bands used: validity needs no extra read."""
        if self._valid_cache is None:
            flags = self.dataset.mask_flag_enums
            self._valid_cache = all(
                flags[i - 1] == [MaskFlags.all_valid] for i in set(self.indexes)
            )
        return self._valid_cache

    def read(self, window: Window, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 ``(3, h, w)`` with nodata pixels set to :data:`FILL_RGB`, and validity;
        a damaged window fails naming it, or is nodata (``read_guard.on_error``). ``out``: a
        ``(3, h, w)`` uint8 array to decode into, where :attr:`reads_into` (a caller that reuses
        its buffers saves paging in fresh memory for every window: 0.8 page faults a pixel)."""
        assert self.read_guard is not None
        return self.read_guard.read(lambda w: self._read(w, out), window, fill=FILL_RGB)

    @property
    def reads_into(self) -> bool:
        """Whether :meth:`read` can decode into a caller's array: three distinct uint8 bands in
        file order, no stretch (the result is then that array, unless it has nodata)."""
        uniq = sorted(set(self.indexes))
        return (
            self.stretch is None
            and list(self.indexes) == uniq
            and all(self.dataset.dtypes[i - 1] == "uint8" for i in uniq)
        )

    def _read(self, window: Window, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        uniq = sorted(set(self.indexes))
        data = self.dataset.read(uniq, window=window, out=out)
        masks = None if self._all_valid() else self.dataset.read_masks(uniq, window=window)
        order = [uniq.index(i) for i in self.indexes]  # bands in order: no copy of the window
        return self._finish(data if order == list(range(len(uniq))) else data[order], masks)

    def read_overview(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene shrunk to ``height x width`` (from overviews when the file has them)."""
        assert self.read_guard is not None
        return self.read_guard.read(
            lambda _: self._read_overview(height, width), None, shape=(height, width),
            fill=FILL_RGB, check_blocks=False,
        )  # fmt: skip

    def _read_overview(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        uniq = sorted(set(self.indexes))
        shape = (len(uniq), height, width)
        data = self.dataset.read(uniq, out_shape=shape, resampling=Resampling.average)
        masks = None
        if not self._all_valid():
            masks = self.dataset.read_masks(uniq, out_shape=shape, resampling=Resampling.nearest)
        return self._finish(data[[uniq.index(i) for i in self.indexes]], masks)

    def describe(self) -> dict[str, Any]:
        """What the manifest and the JSON summary record about the input."""
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "bands": list(self.indexes),
            "dtype": self.src.dtypes[self.indexes[0] - 1],
            "crs": self.crs.to_string() if self.crs else None,
            "transform": list(self.transform)[:6],
            "stretch": None
            if self.stretch is None
            else {"lo": self.stretch.lo.tolist(), "hi": self.stretch.hi.tolist()},
        }

    def clone(self) -> Scene:
        """Another handle on the same scene, for another thread (a GDAL dataset handle must not
        be used by two threads at once); same bands, stretch and resampling, no statistics
        computed again. Close it when done."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(self.path)
        try:
            dataset = src if self.resolution is None else _warped(src, self.resolution)
        except BaseException:
            src.close()
            raise
        return dataclasses.replace(self, src=src, dataset=dataset, warnings=[])

    def close(self) -> None:
        if self.dataset is not self.src:
            self.dataset.close()
        self.src.close()
        if self.read_guard is not None:
            self.read_guard.close()  # its own handle; reopened if a clone reads again

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_local(path: str) -> bool:
    return not (path.startswith("/vsi") or "://" in path)


def open_scene(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[int] | None = None,
    resolution: float | None = None,
    allow_ungeoreferenced: bool = False,
    stretch: bool = True,
) -> Scene:
    """Open ``path`` for segmentation, refusing clearly what cannot work.

    ``resolution`` (ground metres per pixel) resamples on the fly with a bilinear WarpedVRT that
    keeps the CRS, origin and orientation; outputs are then on that grid. ``stretch=False`` skips
    the scene statistics (for a quick validity check).
    """
    path = str(path)
    if _is_local(path) and not Path(path).exists():
        raise FiacliError(f"scene not found: {path}")
    if _is_local(path) and Path(path).is_dir():
        raise FiacliError(f"{path} is a directory, not a raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown format"
        first = first.replace(f"'{path}' ", "").replace(f"{path}: ", "")  # GDAL repeats the path
        raise FiacliError(f"cannot read {path} as a raster: {first}") from None
    try:
        return _prepare(src, path, bands, resolution, allow_ungeoreferenced, stretch)
    except BaseException:
        src.close()
        raise


def _prepare(
    src: Any,
    path: str,
    bands: Sequence[int] | None,
    resolution: float | None,
    allow_ungeoreferenced: bool,
    with_stretch: bool,
) -> Scene:
    indexes, note = select_bands(src, bands)
    notes = [note] if note else []
    dtype = np.dtype(src.dtypes[indexes[0] - 1])
    if dtype.kind == "c":
        raise FiacliError(f"{path} holds complex numbers ({dtype}); the model needs an image")
    georeferenced = src.crs is not None and src.transform != Affine.identity()
    if not georeferenced:
        if src.gcps[0]:
            hint = "warp it to a map grid first (gdalwarp) or pass --allow-ungeoreferenced"
            detail = "is georeferenced by ground control points only"
        else:
            hint = "pass --allow-ungeoreferenced to write pixel coordinates"
            detail = "has no CRS" if src.transform != Affine.identity() else "is not georeferenced"
        if not allow_ungeoreferenced:
            raise FiacliError(f"{path} {detail}; {hint}")
        notes.append(f"{path} {detail}; outputs are in pixel coordinates")
    stretch = None if dtype == np.uint8 or not with_stretch else scene_stretch(src, indexes)
    dataset = src
    if resolution is not None:
        if resolution <= 0:
            raise UsageError("--resolution must be a positive number of metres")
        if not georeferenced:
            raise FiacliError("--resolution needs a georeferenced scene")
        dataset = _warped(src, resolution)
    return Scene(path, src, dataset, indexes, stretch, georeferenced, notes, resolution=resolution)


MAX_UPSAMPLE = 8  # --resolution may make pixels at most this many times finer a side


def _warped(src: Any, resolution: float) -> WarpedVRT:
    """A bilinear WarpedVRT with ``resolution``-metre pixels on the same CRS and orientation."""
    t = src.transform
    mx, my = _metres_per_unit(src.crs, t)
    px = math.hypot(t.a, t.d) * mx  # ground size of one pixel step along a row
    py = math.hypot(t.b, t.e) * my
    sx, sy = resolution / px, resolution / py
    width = max(1, math.ceil(src.width / sx - 1e-9))
    height = max(1, math.ceil(src.height / sy - 1e-9))
    finest = max(px, py) / MAX_UPSAMPLE  # "a side": the coarser side sets the limit
    if resolution < finest * (1 - 1e-9):  # no detail to gain, and hours of chips to pay for it
        raise UsageError(
            f"--resolution {resolution:g} m would upsample the scene's {px:.3g} x {py:.3g} m "
            f"pixels {max(1 / sx, 1 / sy):,.0f}x a side ({width:,} x {height:,} pixels); "
            f"fiacli upsamples at most {MAX_UPSAMPLE}x (--resolution {finest:.3g}); resample it "
            "with gdalwarp "
            "first if that is really what you want"
        )
    if max(width, height) > MAX_SIDE:  # GDAL's sizes are 32-bit: an OverflowError otherwise
        raise UsageError(
            f"--resolution {resolution:g} m would make the scene {width:,} x {height:,} pixels "
            f"(at most {MAX_SIDE:,} a side); its pixels are {px:.3g} x {py:.3g} m"
        )
    return WarpedVRT(
        src,
        crs=src.crs,
        transform=Affine(t.a * sx, t.b * sy, t.c, t.d * sx, t.e * sy, t.f),
        width=width,
        height=height,
        resampling=Resampling.bilinear,
        add_alpha=src.nodata is None,  # carries a mask band or alpha through the warp
    )


class RasterRowWriter:
    """A tiled, compressed GeoTIFF written top to bottom in full rows of tiles.

    Rows arrive in any block heights; they are buffered only until the current row of 512-px
    tiles is complete, so memory is ``512 x width`` per band whatever the scene height, and no
    tile is ever compressed twice (which would bloat the file). ``threads``: GDAL threads for
    the overviews; ``compress_threads``: GDAL's NUM_THREADS for the tiles (in ``segment`` the
    stages already keep the cores busy, and GDAL's pool then only costs CPU time).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        count: int,
        transform: Affine,
        crs: Any,
        nodata: int | None = None,
        descriptions: Sequence[str] = (),
        tags: dict[str, str] | None = None,
        internal_mask: bool = False,
        threads: int = 1,
        compress_threads: int = 1,
        compress: str = COMPRESS,
        level: int | None = COMPRESS_LEVEL,
    ) -> None:
        self.path = Path(path)
        self.width, self.height, self.count = width, height, count
        self.internal_mask = internal_mask
        self.threads = threads
        codec = {"compress": compress, "predictor": 2}
        if level is not None:
            codec["zstd_level" if compress.lower() == "zstd" else "zlevel"] = level
        if compress_threads > 1:  # GDAL compresses the tiles of a row on that many threads
            codec["num_threads"] = compress_threads
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.ds = rasterio.open(
                path,
                "w",
                driver="GTiff",
                width=width,
                height=height,
                count=count,
                dtype="uint8",
                crs=crs,
                transform=transform if crs is not None else None,
                nodata=nodata,
                tiled=True,
                blockxsize=TILE,
                blockysize=TILE,
                BIGTIFF="IF_SAFER",
                **codec,
            )
        for i, text in enumerate(descriptions, 1):
            self.ds.set_band_description(i, text)
        if tags:
            self.ds.update_tags(**tags)
        self.buf = np.empty((count, min(TILE, height), width), np.uint8)
        # validity, 8 pixels a byte: the mask band costs 1/8 of a band in memory
        rows = min(TILE, height)
        self.mbuf = np.empty((rows, -(-width // 8)), np.uint8) if internal_mask else None
        self.y0 = 0  # first row held in the buffer
        self.filled = 0
        # The mask band is created at the first invalid pixel (the rows above it: all valid):
        # a file without invalid pixels gets none, as GDAL reads it all valid anyway, and its
        # overviews are computed 3x faster (same values).
        self.mask_started = False
        self.invalid_held = False  # the rows in the buffer hold an invalid pixel

    def write(self, rows: np.ndarray, valid: np.ndarray | None = None, *,
              all_valid: bool = False) -> None:  # fmt: skip
        """Append ``rows`` (count, h, width) directly below the previous ones (``valid``:
        their mask band, ``all_valid``: all of it valid)."""
        done = 0
        while done < rows.shape[1]:
            end = min(self.y0 + TILE, self.height)
            take = min(rows.shape[1] - done, end - self.y0 - self.filled)
            self.buf[:, self.filled : self.filled + take] = rows[:, done : done + take]
            if self.mbuf is not None and all_valid:
                self.mbuf[self.filled : self.filled + take] = 255
            elif self.mbuf is not None and valid is not None:
                part = valid[done : done + take]
                self.mbuf[self.filled : self.filled + take] = np.packbits(part, axis=1)
                self.invalid_held = self.invalid_held or not part.all()
            self.filled += take
            done += take
            if self.y0 + self.filled == end:
                self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        window = Window(0, self.y0, self.width, self.filled)
        self.ds.write(self.buf[:, : self.filled], window=window)
        if self.mbuf is not None and self.invalid_held and not self.mask_started:
            full = np.full((min(64, self.height), self.width), 255, np.uint8)
            for a in range(0, self.y0, 64):  # the rows written so far: all valid
                b = min(a + 64, self.y0)
                self.ds.write_mask(full[: b - a], window=Window(0, a, self.width, b - a))
            self.mask_started = True
        if self.mbuf is not None and self.mask_started:
            for a in range(0, self.filled, 64):
                b = min(a + 64, self.filled)
                bits = np.unpackbits(self.mbuf[a:b], axis=1, count=self.width)
                self.ds.write_mask(
                    bits * np.uint8(255), window=Window(0, self.y0 + a, self.width, b - a)
                )
        self.y0 += self.filled
        self.filled = 0
        self.invalid_held = False

    def close(self, *, overview_resampling: Resampling | None = None) -> None:
        """Write what is left, then add internal overviews down to one tile (if asked)."""
        if self.ds.closed:
            return
        try:
            self._flush()
            if self.y0 != self.height:
                raise RuntimeError(f"wrote {self.y0} of {self.height} rows")  # internal bug
            factors = []
            while max(self.width, self.height) / (2 ** (len(factors) + 1)) >= TILE / 2:
                factors.append(2 ** (len(factors) + 1))
            if overview_resampling is not None and factors:
                with rasterio.Env(GDAL_NUM_THREADS=str(max(1, self.threads))):
                    self.ds.build_overviews(factors, overview_resampling)
        finally:
            self.ds.close()

    def abort(self) -> None:
        if not self.ds.closed:
            self.ds.close()


def translate_to_cog(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mask: bool, threads: int = 1
) -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF (overviews, tile order)."""
    from rasterio.shutil import copy

    copy(
        str(src),
        str(dst),
        driver="COG",
        compress=COMPRESS.upper(),
        level=str(COMPRESS_LEVEL),
        predictor="2",
        blocksize=TILE,
        overview_resampling="NEAREST" if mask else "AVERAGE",
        num_threads=str(max(1, threads)),
        BIGTIFF="IF_SAFER",
    )

"""VRT files fiacli writes for itself: a band of rows of a scene, and a mosaic of tiles.

Both are plain GDAL VRT XML (``SimpleSource`` windows with ``SrcRect``/``DstRect``), so the
pipeline reads them like any raster. A band VRT keeps every band of its source, with the same
types, colour interpretation, nodata and mask (alpha band, nodata value or mask band), so a chip
read from it holds exactly the pixels and validity the same chip of the whole scene holds. A
mosaic VRT places each tile on one grid; pixels no tile covers are masked out (nodata).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import atomic_output

GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}
ALIGN_TOLERANCE = 1e-6  # of a pixel: tiles whose origins are further off the grid are refused


def _open(path: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown format"
        raise FiacliError(f"cannot read {path} as a raster: {first}") from None


def gdal_name(path: str | os.PathLike[str]) -> str:
    """The name GDAL opens: an absolute path for a local file, as given otherwise."""
    text = os.fspath(path)
    if text.startswith("/vsi") or "://" in text:
        return text
    return str(Path(text).resolve())


def _source(name: str, band: str | int, src: tuple[int, int, int, int],
            dst: tuple[int, int, int, int]) -> str:  # fmt: skip
    sx, sy, sw, sh = src
    dx, dy, dw, dh = dst
    return (
        "<SimpleSource>"
        f'<SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="{sx}" yOff="{sy}" xSize="{sw}" ySize="{sh}"/>'
        f'<DstRect xOff="{dx}" yOff="{dy}" xSize="{dw}" ySize="{dh}"/>'
        "</SimpleSource>"
    )


def _header(width: int, height: int, crs: Any, transform: Affine | None) -> list[str]:
    out = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        out.append(f"<SRS>{escape(crs.to_wkt())}</SRS>")
    if transform is not None and transform != Affine.identity():
        out.append(
            "<GeoTransform>" + ", ".join(repr(v) for v in transform.to_gdal()) + "</GeoTransform>"
        )
    return out


def _band_open(i: int, ds: Any, *, nodata: bool = True) -> str:
    dtype = GDAL_TYPES.get(ds.dtypes[i - 1])
    if dtype is None:
        raise FiacliError(f"{ds.name}: band type {ds.dtypes[i - 1]} cannot go into a VRT")
    parts = [f'<VRTRasterBand dataType="{dtype}" band="{i}">']
    value = ds.nodatavals[i - 1]
    if nodata and value is not None:
        text = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
        parts.append(f"<NoDataValue>{text}</NoDataValue>")
    interp = ds.colorinterp[i - 1].name
    parts.append(f"<ColorInterp>{interp[:1].upper() + interp[1:]}</ColorInterp>")
    description = ds.descriptions[i - 1]
    if description:
        parts.append(f"<Description>{escape(description)}</Description>")
    return "".join(parts)


def _dataset_mask(ds: Any) -> bool:
    """Whether validity comes from a mask band shared by every band (not alpha, not nodata)."""
    flags = ds.mask_flag_enums
    return any(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags)


def window_xml(path: str | os.PathLike[str], row_off: int, height: int) -> str:
    """A VRT of rows ``[row_off, row_off + height)`` of ``path``, every band and the mask kept."""
    name = gdal_name(path)
    with _open(name) as ds:
        if not 0 <= row_off < row_off + height <= ds.height:
            raise ValueError(f"rows {row_off}..{row_off + height} outside {ds.height}")
        georef = ds.transform != Affine.identity()
        t = ds.transform
        shifted = Affine(t.a, t.b, t.c + t.b * row_off, t.d, t.e, t.f + t.e * row_off)
        out = _header(ds.width, height, ds.crs, shifted if georef else None)
        window = (0, row_off, ds.width, height)
        full = (0, 0, ds.width, height)
        for i in range(1, ds.count + 1):
            out.append(_band_open(i, ds))
            out.append(_source(name, i, window, full))
            out.append("</VRTRasterBand>")
        if _dataset_mask(ds):
            out.append('<MaskBand><VRTRasterBand dataType="Byte">')
            out.append(_source(name, "mask,1", window, full))
            out.append("</VRTRasterBand></MaskBand>")
        out.append("</VRTDataset>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class MosaicGrid:
    """The grid a mosaic VRT puts its tiles on."""

    width: int
    height: int
    transform: Affine
    crs: Any


def mosaic_xml(tiles: Sequence[str | os.PathLike[str]]) -> tuple[str, MosaicGrid]:
    """A VRT placing ``tiles`` on one grid (same CRS, resolution and bands; origins aligned).

    Pixels no tile covers are nodata: a dataset mask band gathers each tile's own mask (alpha
    bands are carried as bands instead). Where tiles overlap, the later tile wins.
    """
    if not tiles:
        raise UsageError("--mosaic needs at least one tile")
    names = [gdal_name(t) for t in tiles]
    opened = []
    try:
        for name in names:
            opened.append(_open(name))
        first = opened[0]
        t0 = first.transform
        if t0.b != 0 or t0.d != 0:
            raise FiacliError(
                f"mosaic: {names[0]} is rotated; only north-up tiles can be mosaicked"
            )
        for name, ds in zip(names, opened, strict=True):
            _check_tile(name, ds, names[0], first)
        a, e = t0.a, t0.e
        lefts = [ds.transform.c for ds in opened]
        tops = [ds.transform.f for ds in opened]
        left, top = min(lefts), max(tops) if e < 0 else min(tops)
        offsets = []
        for name, ds in zip(names, opened, strict=True):
            fx, fy = (ds.transform.c - left) / a, (ds.transform.f - top) / e
            x, y = round(fx), round(fy)
            if abs(fx - x) > ALIGN_TOLERANCE or abs(fy - y) > ALIGN_TOLERANCE:
                raise FiacliError(
                    f"mosaic: {name} is not aligned with {names[0]}'s pixel grid "
                    f"(off by {abs(fx - x):.3g}, {abs(fy - y):.3g} px); resample it first"
                )
            offsets.append((x, y))
        width = max(x + ds.width for (x, _), ds in zip(offsets, opened, strict=True))
        height = max(y + ds.height for (_, y), ds in zip(offsets, opened, strict=True))
        transform = Affine(a, 0, left, 0, e, top)
        out = _header(width, height, first.crs, transform)
        alpha = any(MaskFlags.alpha in f for f in first.mask_flag_enums)
        for i in range(1, first.count + 1):
            out.append(_band_open(i, first, nodata=False))
            for name, ds, (x, y) in zip(names, opened, offsets, strict=True):
                out.append(
                    _source(name, i, (0, 0, ds.width, ds.height), (x, y, ds.width, ds.height))
                )
            out.append("</VRTRasterBand>")
        if not alpha:
            out.append('<MaskBand><VRTRasterBand dataType="Byte">')
            for name, ds, (x, y) in zip(names, opened, offsets, strict=True):
                box = (0, 0, ds.width, ds.height)
                out.append(_source(name, "mask,1", box, (x, y, ds.width, ds.height)))
            out.append("</VRTRasterBand></MaskBand>")
        out.append("</VRTDataset>")
        return "\n".join(out) + "\n", MosaicGrid(width, height, transform, first.crs)
    finally:
        for ds in opened:
            ds.close()


def _check_tile(name: str, ds: Any, first_name: str, first: Any) -> None:
    t, t0 = ds.transform, first.transform
    if ds.crs != first.crs:
        raise FiacliError(
            f"mosaic: {name} is in {ds.crs or 'no CRS'}, {first_name} in {first.crs or 'no CRS'}; "
            "tiles must share one CRS (reproject them first)"
        )
    if t == Affine.identity() or first.crs is None:
        raise FiacliError(f"mosaic: {name} is not georeferenced; tiles need a CRS and transform")
    if t.b != 0 or t.d != 0:
        raise FiacliError(f"mosaic: {name} is rotated; only north-up tiles can be mosaicked")
    if not (math.isclose(t.a, t0.a, rel_tol=1e-9) and math.isclose(t.e, t0.e, rel_tol=1e-9)):
        raise FiacliError(
            f"mosaic: {name} has {abs(t.a):g} x {abs(t.e):g} pixels, {first_name} "
            f"{abs(t0.a):g} x {abs(t0.e):g}; tiles must share one resolution"
        )
    if ds.count != first.count or tuple(ds.dtypes) != tuple(first.dtypes):
        raise FiacliError(
            f"mosaic: {name} has {ds.count} band(s) of {ds.dtypes[0]}, {first_name} "
            f"{first.count} of {first.dtypes[0]}; tiles must have the same bands"
        )


def write_vrt(path: str | os.PathLike[str], xml: str, *, overwrite: bool = True) -> Path:
    """Write VRT XML under ``path`` (complete or not at all)."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(xml, encoding="utf-8")
    return Path(path)


__all__ = ["MosaicGrid", "gdal_name", "mosaic_xml", "window_xml", "write_vrt"]

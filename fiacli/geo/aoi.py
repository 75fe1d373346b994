"""Areas of interest: the places a user means, read, checked and put in the scene's CRS.

An area of interest (AOI) is one polygon the expression is answered in. It comes from a bounding
box (``--bbox MINX,MINY,MAXX,MAXY``, in the scene's CRS or ``--bbox-crs``), from any vector file
GDAL/OGR reads (``--aoi``: GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet …, with
``--aoi-layer`` and an SQL ``--aoi-where`` to pick features), or, from Python, from shapely
geometries or a GeoDataFrame. :func:`load_areas` turns any of them into a list of :class:`Area`
in the scene's CRS and :func:`clip_to_scene` cuts them to the scene's footprint.

Problems are reported as they should be: a file that does not open or has no CRS is one error
line naming the file; an empty selection, a missing ``--expression-field`` attribute or an empty
expression is an error naming the feature; invalid geometries are repaired (``make_valid``) and
counted in one warning; a feature outside the scene is a warning naming it. Warnings are returned
as notes, not printed, so that a check before the run and the run itself say them once.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

from fiacli.core.errors import FiacliError, UsageError

PathLike = str | os.PathLike[str]
BBOX_ID = "bbox"
# A --bbox in another CRS is a box of that CRS (e.g. lines of latitude and longitude): its edges
# are densified before reprojection, each into DENSIFY pieces. Features are reprojected vertex by
# vertex, as GDAL and geopandas do, so a feature reprojected back and forth is the same feature.
DENSIFY = 64


@dataclass(frozen=True)
class Area:
    """One area of interest: a polygon in the scene's CRS, answered as one picture."""

    id: Any  # the feature's FID in its file, its index in a GeoDataFrame, or "bbox"
    geometry: Any  # shapely (Multi)Polygon, valid, in the scene's CRS
    fields: dict[str, Any] = field(default_factory=dict)  # the --keep-fields values
    expression: str | None = None  # from --expression-field

    @property
    def name(self) -> str:
        """How messages name the feature."""
        return "the --bbox area" if self.id == BBOX_ID else f"AOI feature {self.id}"


@dataclass
class AreaSet:
    """What :func:`load_areas` read: the areas and the warnings to show once."""

    areas: list[Area]
    notes: list[str] = field(default_factory=list)
    source: str = ""  # the file, "--bbox" or "the given geometries", for messages


def parse_bbox(value: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"minx,miny,maxx,maxy"`` (or four numbers) -> a tuple; a usage error otherwise."""
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise UsageError(f"--bbox takes four numbers MINX,MINY,MAXX,MAXY, not {value!r}") from None
    if len(numbers) != 4:
        raise UsageError(f"--bbox takes four numbers MINX,MINY,MAXX,MAXY, not {value!r}")
    if not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"--bbox must be finite numbers, not {value!r}")
    minx, miny, maxx, maxy = numbers
    if minx >= maxx or miny >= maxy:
        given = ",".join(f"{v:.12g}" for v in numbers)
        raise UsageError(f"--bbox {given}: MINX must be below MAXX and MINY below MAXY")
    return minx, miny, maxx, maxy


def parse_fields(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b"``, ``["a", "b,c"]`` or None -> ``("a", "b", "c")`` (order kept, no duplicates)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return tuple(out)


def _crs(value: Any, what: str) -> Any:
    from pyproj import CRS

    try:
        return CRS.from_user_input(value)
    except Exception:
        raise UsageError(f"{what}: unknown CRS {value!r}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_aoi_file(path: PathLike, *, layer: str | None = None, where: str | None = None) -> Any:
    """The features of a vector file as a GeoDataFrame indexed by FID (one-line errors)."""
    import geopandas as gpd

    name = os.fspath(path)
    local = not (name.startswith("/vsi") or "://" in name)
    if local and not Path(name).exists():
        raise FiacliError(f"AOI file not found: {name}")
    try:
        if Path(name).suffix.lower() == ".parquet" and local:
            frame = _read_parquet(name, layer, where)
        else:
            frame = gpd.read_file(name, layer=layer, where=where, engine="pyogrio",
                                  fid_as_index=True)  # fmt: skip
    except FiacliError:
        raise
    except Exception as exc:
        detail = _first_line(exc).replace(f"'{name}' ", "").replace(f"{name}: ", "")
        detail = detail.split("; It might help")[0]  # GDAL's hint about driver prefixes
        hint = " (check --aoi-where)" if where and "where" in detail.lower() else ""
        raise FiacliError(f"cannot read AOI file {name}: {detail}{hint}") from None
    if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry is None:
        raise FiacliError(f"AOI file {name} has no geometry column")
    return frame


def _read_parquet(name: str, layer: str | None, where: str | None) -> Any:
    """GeoParquet without GDAL's Parquet driver; --aoi-where through an in-memory GeoPackage."""
    import geopandas as gpd
    import pyogrio

    if layer is not None:
        raise FiacliError(f"AOI file {name} is GeoParquet, which has one layer; drop --aoi-layer")
    frame = gpd.read_parquet(name)
    if where is None:
        return frame
    memory = f"/vsimem/fiacli-aoi-{os.getpid()}-{id(frame)}.gpkg"
    try:
        pyogrio.write_dataframe(frame.reset_index(drop=True), memory, layer="aoi")
        picked = gpd.read_file(memory, layer="aoi", where=where, engine="pyogrio",
                               fid_as_index=True)  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            pyogrio.vsi_unlink(memory)
    picked.index = picked.index - 1  # GeoPackage FIDs start at 1; the frame's rows at 0
    return picked


def _as_frame(source: Any, crs: Any) -> tuple[Any, str]:
    """In-memory AOIs (GeoDataFrame, GeoSeries, shapely geometries) as a GeoDataFrame."""
    import geopandas as gpd

    if isinstance(source, gpd.GeoDataFrame):
        frame, what = source, "the AOI GeoDataFrame"
    elif isinstance(source, gpd.GeoSeries):
        frame, what = gpd.GeoDataFrame(geometry=source), "the AOI GeoSeries"
    else:
        geoms = [source] if isinstance(source, shapely.Geometry) else list(source)
        bad = [g for g in geoms if not isinstance(g, shapely.Geometry)]
        if bad:
            raise UsageError(
                "aoi takes a vector file, a GeoDataFrame, a GeoSeries or shapely geometries, "
                f"not {type(bad[0]).__name__}"
            )
        frame, what = gpd.GeoDataFrame(geometry=gpd.GeoSeries(geoms)), "the given geometries"
    if frame.crs is None and crs is not None:
        frame = frame.set_crs(crs)
    return frame, what


def bbox_area(bbox: str | Sequence[float], *, scene_crs: Any, bbox_crs: Any = None) -> AreaSet:
    """The --bbox as one area (id ``"bbox"``), its edges densified when reprojected."""
    geom = shapely.box(*parse_bbox(bbox))
    if bbox_crs is not None:
        src = _crs(bbox_crs, "--bbox-crs")
        one = np.array([geom], dtype=object)
        geom = _reproject(one, np.ones(1, bool), src, scene_crs, densify=True)[0]
    return AreaSet([Area(BBOX_ID, geom)], [], "--bbox")


def load_areas(
    source: Any,
    *,
    scene_crs: Any,
    layer: str | None = None,
    where: str | None = None,
    aoi_crs: Any = None,
    expression_field: str | None = None,
    keep_fields: Sequence[str] = (),
) -> AreaSet:
    """Read, check, repair and reproject AOIs into :class:`Area` objects in ``scene_crs``
    (None: kept in their own CRS).

    ``source``: a vector file path, a GeoDataFrame/GeoSeries or shapely geometries.
    ``aoi_crs`` is the CRS of features that carry none (shapely geometries: default the
    scene's CRS); a file or GeoDataFrame without a CRS and without ``aoi_crs`` is an error.
    """
    import geopandas as gpd

    if isinstance(source, (str, os.PathLike)):
        frame, what = read_aoi_file(source, layer=layer, where=where), f"AOI file {source}"
        if frame.crs is None:
            if aoi_crs is None:
                raise FiacliError(f"AOI file {source} has no CRS; pass --aoi-crs (e.g. EPSG:4326)")
            frame = frame.set_crs(_crs(aoi_crs, "--aoi-crs"))
    else:
        if layer is not None or where is not None:
            raise UsageError("--aoi-layer and --aoi-where pick features of a file; filter the "
                             "GeoDataFrame instead")  # fmt: skip
        is_shapes = not isinstance(source, (gpd.GeoDataFrame, gpd.GeoSeries))
        default = aoi_crs if aoi_crs is not None else (scene_crs if is_shapes else None)
        frame, what = _as_frame(source, None if default is None else _crs(default, "aoi_crs"))
        if frame.crs is None:
            raise FiacliError(f"{what} has no CRS; set one or pass aoi_crs")
    if len(frame) == 0:
        if where:
            raise FiacliError(f"--aoi-where {where!r} selects no feature of {source}")
        raise FiacliError(f"{what} holds no feature")
    columns = [c for c in frame.columns if c != frame.geometry.name]
    for name in (*([expression_field] if expression_field else []), *keep_fields):
        if name not in columns:
            listed = ", ".join(map(str, columns)) or "none"
            flag = "--expression-field" if name == expression_field else "--keep-fields"
            raise FiacliError(f"{flag} {name!r}: {what} has no such attribute (it has: {listed})")
    notes: list[str] = []
    geoms = np.asarray(frame.geometry.values, dtype=object)
    ids = frame.index.tolist()
    missing = [i for i, g in zip(ids, geoms, strict=True) if g is None or shapely.is_empty(g)]
    if missing:
        notes.append(f"{_count(len(missing), 'AOI feature')} without geometry skipped "
                     f"({_some(missing)})")  # fmt: skip
    keep = np.array([g is not None and not shapely.is_empty(g) for g in geoms], bool)
    invalid = keep & ~shapely.is_valid(np.where(keep, geoms, None))
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        n = _count(int(invalid.sum()), "invalid AOI geometry", "invalid AOI geometries")
        notes.append(f"{n} repaired with make_valid")
    geoms = np.array([_polygonal(g) if k else None for g, k in zip(geoms, keep, strict=True)],
                     dtype=object)  # fmt: skip
    for row, (i, g, k) in enumerate(zip(ids, geoms, keep, strict=True)):
        if k and g is None:
            kind = frame.geometry.iloc[row].geom_type
            raise FiacliError(f"{_name(i)} is a {kind}; areas of interest must be polygons "
                              "(buffer points and lines first)")  # fmt: skip
    if scene_crs is not None:
        geoms = _reproject(geoms, keep, frame.crs, scene_crs)
    areas = []
    for k, (fid, geom) in enumerate(zip(ids, geoms, strict=True)):
        if not keep[k]:
            continue
        row = frame.iloc[k]
        expression = None
        if expression_field:
            value = row[expression_field]
            text = "" if _is_missing(value) else " ".join(str(value).split())
            if not text:
                raise FiacliError(f"{_name(fid)} has an empty --expression-field "
                                  f"{expression_field!r}")  # fmt: skip
            expression = text
        fields = {name: _plain(row[name]) for name in keep_fields}
        areas.append(Area(_plain(fid), geom, fields, expression))
    if not areas:
        raise FiacliError(f"{what} holds no feature with a geometry")
    return AreaSet(areas, notes, what)


def _name(fid: Any) -> str:
    return "the --bbox area" if fid == BBOX_ID else f"AOI feature {fid}"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _some(ids: Sequence[Any], shown: int = 5) -> str:
    head = ", ".join(map(str, ids[:shown]))
    return head + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones (JSON, manifest); NaN -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if _is_missing(value) else value


def _polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (make_valid can add lines or points), or None."""
    if isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    if isinstance(geom, shapely.GeometryCollection):
        parts = [g for g in shapely.get_parts(geom) if isinstance(g, shapely.Polygon)]
        parts += [p for g in shapely.get_parts(geom) if isinstance(g, shapely.MultiPolygon)
                  for p in g.geoms]  # fmt: skip
        if parts:
            return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return None


def _reproject(geoms: np.ndarray, keep: np.ndarray, src: Any, dst: Any, *,
               densify: bool = False) -> np.ndarray:  # fmt: skip
    """Geometries reprojected from ``src`` to ``dst`` (pyproj CRS or rasterio CRS), their edges
    first cut into :data:`DENSIFY` pieces with ``densify``."""
    from pyproj import CRS, Transformer

    s = CRS.from_user_input(src)
    d = CRS.from_user_input(dst.to_wkt() if hasattr(dst, "to_wkt") else dst)
    if s == d or not keep.any():
        return geoms
    out = geoms.copy()
    live = out[keep]
    if densify:
        bounds = shapely.bounds(live)
        extent = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        live = shapely.segmentize(live, np.maximum(extent / DENSIFY, 1e-12))
    transformer = Transformer.from_crs(s, d, always_xy=True)
    try:
        live = shapely.transform(live, lambda xy: np.column_stack(transformer.transform(*xy.T)))
    except Exception as exc:
        detail = _first_line(exc)
        raise FiacliError(f"cannot reproject the AOIs to the scene's CRS: {detail}") from None
    if not np.isfinite(shapely.bounds(live)).all():
        raise FiacliError("some AOIs cannot be reprojected to the scene's CRS (outside its area "
                          "of use)")  # fmt: skip
    bad = ~shapely.is_valid(live)
    if bad.any():  # a reprojection can fold a ring near a projection's edge
        live[bad] = [_polygonal(g) for g in shapely.make_valid(live[bad])]
    out[keep] = live
    return out


def scene_footprint(transform: Affine, width: int, height: int) -> Any:
    """The scene's outline in its CRS (rotation included)."""
    t = transform
    corners = [(t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f)
               for x, y in ((0, 0), (width, 0), (width, height), (0, height))]  # fmt: skip
    return shapely.Polygon(corners)


def clip_to_scene(areas: Sequence[Area], footprint: Any) -> tuple[list[Area], list[str]]:
    """Areas cut to the scene; those entirely outside are dropped with a warning naming them."""
    kept, notes, outside = [], [], []
    near = shapely.intersects(footprint, np.array([a.geometry for a in areas], dtype=object))
    for area, touches in zip(areas, near.tolist(), strict=True):
        if not touches:  # the quick test first: over many scenes most areas miss each one
            outside.append(area)
            continue
        geom = area.geometry
        if not shapely.contains(footprint, geom):
            geom = _polygonal(shapely.intersection(geom, footprint))
        if geom is None or shapely.is_empty(geom) or geom.area <= 0:
            outside.append(area)
            continue
        kept.append(Area(area.id, geom, area.fields, area.expression))
    for area in outside:
        notes.append(f"{area.name} lies outside the scene; skipped")
    return kept, notes


@dataclass(frozen=True)
class PixelWindow:
    """A window of the scene's grid in whole pixels."""

    col: int
    row: int
    width: int
    height: int

    def union(self, other: PixelWindow) -> PixelWindow:
        col, row = min(self.col, other.col), min(self.row, other.row)
        right = max(self.col + self.width, other.col + other.width)
        bottom = max(self.row + self.height, other.row + other.height)
        return PixelWindow(col, row, right - col, bottom - row)

    def as_list(self) -> list[int]:
        return [self.col, self.row, self.width, self.height]


def pixel_window(geom: Any, transform: Affine, width: int, height: int) -> PixelWindow | None:
    """The whole-pixel window of the scene grid that holds ``geom`` (cut to the grid)."""
    inv = ~transform
    pixels = shapely.transform(geom, lambda xy: np.column_stack(
        (inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f)
    ))  # fmt: skip
    x0, y0, x1, y1 = shapely.bounds(pixels)
    # a polygon reaching less than this into a pixel does not hold its centre; it also absorbs
    # the float noise of transforms and the bulge of densified, reprojected edges
    eps = 0.01
    c0, r0 = max(0, math.floor(x0 + eps)), max(0, math.floor(y0 + eps))
    c1, r1 = min(width, math.ceil(x1 - eps)), min(height, math.ceil(y1 - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return PixelWindow(c0, r0, c1 - c0, r1 - r0)


@dataclass(frozen=True)
class Rect:
    """A window of a source raster in (fractional) pixels: a grid window in source pixels."""

    col: float
    row: float
    width: float
    height: float


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class CoarseMask:
    """A small 0/255 GeoTIFF over a window, ``cell`` pixels a cell: where chips are needed."""

    path: str
    cell: int
    cols: int
    rows: int


def window_vrt(
    source: str,
    *,
    crs_wkt: str,
    indexes: Sequence[int],
    src: PixelWindow | Rect,
    size: tuple[int, int],
    dst: PixelWindow,
    transform: Affine,
    stretch: tuple[Sequence[float], Sequence[float]] | None = None,
    resampling: str = "nearest",
    no_overviews: bool = False,
    source_masked: bool = False,
    coarse_mask: CoarseMask | None = None,
) -> str:
    """A VRT (XML text) that shows the ``src`` window of ``source`` as a ``size`` picture.

    The window lands on ``dst`` inside the picture (resampled with ``resampling`` when the sizes
    differ); the picture's pixels outside ``dst``, the source's own nodata and, with
    ``coarse_mask``, the cells it marks 0 are nodata in its mask band. ``indexes`` are the
    source bands shown as red, green, blue; ``stretch`` (per-band low and high values) maps
    non-8-bit data onto 0..255 as :class:`fiacli.geo.raster.Stretch` does. ``no_overviews``
    reads full resolution even when the source has overviews (the resampling then is exactly
    ``resampling``: GDAL's bilinear downsampling is antialiased like the training resize).
    """
    from xml.sax.saxutils import escape, quoteattr

    width, height = size
    name = escape(source)
    opts = ("<OpenOptions><OOI key=\"OVERVIEW_LEVEL\">NONE</OOI></OpenOptions>"
            if no_overviews else "")  # fmt: skip
    rects = (
        f'<SrcRect xOff="{_n(src.col)}" yOff="{_n(src.row)}" xSize="{_n(src.width)}" '
        f'ySize="{_n(src.height)}"/>'
        f'<DstRect xOff="{dst.col}" yOff="{dst.row}" xSize="{dst.width}" ySize="{dst.height}"/>'
    )
    head = f'<SourceFilename relativeToVRT="0">{name}</SourceFilename>{opts}'
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(crs_wkt)}</SRS>",
             f"<GeoTransform>{', '.join(repr(float(v)) for v in transform.to_gdal())}"
             "</GeoTransform>"]  # fmt: skip
    for k, (band, colour) in enumerate(zip(indexes, ("Red", "Green", "Blue"), strict=True)):
        lines.append(f'<VRTRasterBand dataType="Byte" band="{k + 1}">'
                     f"<ColorInterp>{colour}</ColorInterp>")  # fmt: skip
        if stretch is None:
            lines.append(f"<SimpleSource resampling={quoteattr(resampling)}>{head}"
                         f"<SourceBand>{band}</SourceBand>{rects}</SimpleSource>")  # fmt: skip
        else:
            lo, hi = float(stretch[0][k]), float(stretch[1][k])
            ratio = 255.0 / max(hi - lo, 1e-12)
            lines.append(f"<ComplexSource resampling={quoteattr(resampling)}>{head}"
                         f"<SourceBand>{band}</SourceBand>{rects}"
                         f"<ScaleOffset>{-lo * ratio!r}</ScaleOffset>"
                         f"<ScaleRatio>{ratio!r}</ScaleRatio></ComplexSource>")  # fmt: skip
        lines.append("</VRTRasterBand>")
    padded = (dst.col, dst.row, dst.width, dst.height) != (0, 0, width, height)
    if source_masked or padded or coarse_mask is not None:
        lines.append('<MaskBand><VRTRasterBand dataType="Byte">')
        if source_masked:  # the scene's own validity (nodata, mask band, alpha)
            lines.append(f"<SimpleSource>{head}<SourceBand>mask,{indexes[0]}</SourceBand>"
                         f"{rects}</SimpleSource>")  # fmt: skip
        else:  # valid wherever the window lands: a constant 255 drawn from band 1
            lines.append(f"<ComplexSource>{head}<SourceBand>{indexes[0]}</SourceBand>{rects}"
                         "<ScaleOffset>255</ScaleOffset><ScaleRatio>0</ScaleRatio>"
                         "</ComplexSource>")  # fmt: skip
        if coarse_mask is not None:  # its 0 cells overwrite, its 255 cells are transparent
            c = coarse_mask
            lines.append(
                f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(c.path)}'
                "</SourceFilename><SourceBand>1</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{c.cols}" ySize="{c.rows}"/>'
                f'<DstRect xOff="{dst.col}" yOff="{dst.row}" xSize="{c.cols * c.cell}" '
                f'ySize="{c.rows * c.cell}"/><NODATA>255</NODATA></ComplexSource>'
            )
        lines.append("</VRTRasterBand></MaskBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


__all__ = [
    "BBOX_ID",
    "Area",
    "AreaSet",
    "CoarseMask",
    "PixelWindow",
    "Rect",
    "bbox_area",
    "clip_to_scene",
    "load_areas",
    "parse_bbox",
    "parse_fields",
    "pixel_window",
    "read_aoi_file",
    "scene_footprint",
    "window_vrt",
]

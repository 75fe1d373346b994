"""Polygons from a mask streamed top to bottom, equal to vectorising the whole scene at once.

Each window of rows is labelled (4-connected, like GDAL's polygonize with connectivity 4) and
polygonised with GDAL; regions that touch a window edge are joined to the regions they touch
across it (pixel adjacency, not geometry, so two blobs meeting at a corner stay apart) and their
pieces are joined once the region is complete (:func:`join_pieces`). Pixel coordinates are
integers until the very end, so pieces meet exactly; the affine transform is applied once. Areas
are true ground m²: geodesic in a lat/lon CRS, planar corrected by the projection's areal scale
otherwise (Web Mercator too).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
import shapely.errors
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage

from fiacli.core.errors import FiacliError
from fiacli.core.io import owner_tag, sweep_stale
from fiacli.geo import polygonize
from fiacli.geo.choices import VECTOR_DRIVERS

FOUR = ndimage.generate_binary_structure(2, 1)
# What memory holds of the results: closed polygons go to the spool once they total this many
# vertices (a polygon count would not do: one noisy polygon can have tens of thousands), and are
# copied to each output this many features at a time.
SPOOL_VERTICES = 200_000
COPY_FEATURES = 2_000
# Regions with fewer vertices than this are joined by an overlay union: the coverage union's
# fixed costs (about 0.25 ms) make it the slower one below a few hundred vertices.
COVERAGE_UNION_VERTICES = 256
# Nor when cutting the seam edges would add more vertices than this many times the region's own:
# long straight seam edges (a uniform region: water, fields) would add one per pixel of width.
SEAM_CUT_GROWTH = 2.0


@dataclass
class Regions:
    """Polygons in pixel coordinates with their pixel count and probability sum (0..255 units)."""

    geometries: list[Any] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)
    prob_sums: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.geometries)

    def extend(self, other: Regions) -> None:
        self.geometries += other.geometries
        self.pixels += other.pixels
        self.prob_sums += other.prob_sums

    def resolve(self) -> Regions:
        """Wait for the unions still running in a pool: then ``geometries`` are polygons."""
        self.geometries = [g.result() if isinstance(g, Future) else g for g in self.geometries]
        return self


class _Open:
    """A region that touches the last row seen so far: its pieces wait for the next window."""

    __slots__ = ("pieces", "pixels", "prob", "members")

    def __init__(self, piece: Any, pixels: int, prob: float, gid: int) -> None:
        self.pieces, self.pixels, self.prob, self.members = [piece], pixels, prob, [gid]


@dataclass
class _WindowShapes:
    """What one window of rows gives, computed on its own (in a worker thread when pooled)."""

    y0: int
    n: int  # labels in the window
    pixels: np.ndarray  # (n + 1,) pixels per label
    probs: np.ndarray  # (n + 1,) probability sums per label
    bottom: np.ndarray  # labels along the last row
    first: np.ndarray  # (width,) labels of the first row
    last: np.ndarray  # (width,) labels of the last row
    pieces: np.ndarray  # polygons, pixel coordinates
    values: np.ndarray  # their labels
    closed: np.ndarray  # (len(pieces),) touches neither window edge: complete


def _window_shapes(mask: np.ndarray, prob: np.ndarray, y0: int, first: bool) -> _WindowShapes:
    """Label a window (4-connected, as GDAL) and polygonise it with GDAL. Only the box around
    its foreground is polygonised: the same polygons in the same order as the whole window
    (``tests/test_vectorize.py``), at a fraction of the cost for sparse masks (GDAL scans
    every pixel: a megapixel took 8 ms with one small object in it)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):  # most windows of a real mask: nothing to label
        zero = np.zeros(mask.shape[1], np.int32)
        return _WindowShapes(y0, 0, np.zeros(1, np.int64), np.zeros(1), zero[:1], zero,
                             zero.copy(), np.empty(0, dtype=object), np.empty(0, np.int64),
                             np.empty(0, bool))  # fmt: skip
    labels, n = ndimage.label(mask, structure=FOUR)
    fg = labels[mask]  # counting over foreground only keeps the temporaries small
    pixels = np.bincount(fg, minlength=n + 1)
    probs = np.bincount(fg, weights=prob[mask], minlength=n + 1)
    del fg
    top = np.zeros(1, np.int32) if first else np.unique(labels[0])
    bottom = np.unique(labels[-1])
    edge = np.zeros(n + 1, bool)
    edge[top] = True
    edge[bottom] = True
    # GDAL scans every pixel: only the box around the foreground, with a pixel of margin
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, mask.shape[0])
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, mask.shape[1])
    box, shifted = labels[r0:r1, c0:c1], Affine.translation(c0, y0 + r0)
    if polygonize.available():  # the same polygons, without holding the GIL
        pieces, values = polygonize.polygonize(box, shifted)
    else:
        shapes = rasterio.features.shapes(box, mask=box > 0, connectivity=4,
                                          transform=shifted)  # fmt: skip
        pieces, values = _polygons(shapes)
    return _WindowShapes(y0, n, pixels, probs, bottom, labels[0].copy(), labels[-1].copy(),
                         pieces, values, ~edge[values])  # fmt: skip


def _timed(clock: Any, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a pool thread, its seconds added to ``clock`` (if any)."""
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        if clock is not None:
            clock.add(busy=time.perf_counter() - t0, items=1)


def join_pieces(pieces: list[Any]) -> Any:
    """One region from its pieces (pixel coordinates), cut from it by horizontal seams (of
    windows, or of a split scene's bands): they meet along the seams and never overlap, a
    coverage. Each piece's top and bottom edges are cut at every pixel corner, so that the edges
    two pieces share have the same vertices, and GEOS's coverage union drops them (several times
    faster than an overlay union on a noisy mask, the same polygon); the collinear vertices left
    along the seams go too, as GDAL never writes them. An overlay union joins the rest: small
    regions (below :data:`COVERAGE_UNION_VERTICES`: the coverage path has fixed costs), and
    regions whose seam edges are long and straight (:data:`SEAM_CUT_GROWTH`)."""
    vertices = int(shapely.get_num_coordinates(pieces).sum())
    if vertices < COVERAGE_UNION_VERTICES:
        return _overlay_union(pieces)
    try:
        cut = _cut_seam_edges(pieces, most=int(vertices * (1 + SEAM_CUT_GROWTH)))
        joined = None if cut is None else shapely.coverage_union_all(cut)
    except (shapely.errors.GEOSException, ValueError):  # not polygons, or not a coverage
        joined = None
    if joined is None or joined.geom_type != "Polygon":  # pieces that overlap or do not touch
        return _overlay_union(pieces)
    return _drop_collinear(joined)


def _overlay_union(pieces: list[Any]) -> Any:
    """Any pieces' union, without the collinear vertices left where they met."""
    return shapely.simplify(shapely.union_all(pieces), 0)


def _cut_seam_edges(pieces: list[Any], most: int) -> Any:
    """The pieces with a vertex at every integer x along their horizontal edges at their top
    and bottom rows, the only edges a piece can share with another window's piece; None when
    that would make more than ``most`` vertices (checked before any is made)."""
    kind, xy, (rings, polys) = shapely.to_ragged_array(pieces)
    if kind != shapely.GeometryType.POLYGON:
        raise ValueError("not polygons")
    ring_of_vertex = np.repeat(np.arange(len(rings) - 1), np.diff(rings))
    piece_of_ring = np.repeat(np.arange(len(polys) - 1), np.diff(polys))
    bounds = shapely.bounds(pieces)[piece_of_ring[ring_of_vertex]]
    x, y = xy[:, 0], xy[:, 1]
    dx = np.diff(x, append=x[:1])  # edge from each vertex to the next
    starts_edge = np.ones(len(xy), bool)
    starts_edge[rings[1:] - 1] = False  # a ring's closing vertex (it repeats the first)
    flat = np.append(y[1:] == y[:-1], False)
    seam = starts_edge & flat & ((y == bounds[:, 1]) | (y == bounds[:, 3])) & (np.abs(dx) > 1)
    count = np.where(seam, np.abs(dx).astype(np.int64), 1)
    if int(count.sum()) > most:
        return None
    out = np.repeat(xy, count, axis=0)
    first = np.repeat(np.cumsum(count) - count, count)
    out[:, 0] += np.repeat(np.sign(dx), count) * (np.arange(len(out)) - first)
    ends = np.append(0, np.cumsum(count))
    return shapely.from_ragged_array(kind, out, (ends[rings], polys))


def _drop_collinear(polygon: Any) -> Any:
    """``polygon`` without the vertices that lie on a straight line between their neighbours
    (exact: pixel coordinates are integers); each ring closes on its first vertex kept. GEOS's
    output repeats no vertex (this would drop both copies of one)."""
    kind, xy, offsets = shapely.to_ragged_array([polygon])
    rings = offsets[0]
    ring_of_vertex = np.repeat(np.arange(len(rings) - 1), np.diff(rings))
    start, closing = rings[:-1][ring_of_vertex], rings[1:][ring_of_vertex] - 1
    here = np.arange(len(xy))
    before = xy[np.where(here == start, closing - 1, here - 1)]
    after = xy[np.minimum(here + 1, len(xy) - 1)]
    (ax, ay), (bx, by) = (xy - before).T, (after - xy).T
    turn = ax * by - ay * bx
    keep = (turn != 0) & (here != closing)
    kept = np.bincount(ring_of_vertex[keep], minlength=len(rings) - 1)
    body = xy[keep]
    ends = np.cumsum(kept)
    closed = np.insert(body, ends, body[ends - kept], axis=0)
    ring_ends = np.append(0, np.cumsum(kept + 1))
    return shapely.from_ragged_array(kind, closed, (ring_ends, *offsets[1:]))[0]


class StreamingVectorizer:
    """Feed mask rows top to bottom with :meth:`add_rows`; :meth:`finish` returns the regions.

    Rows are gathered into windows of about ``window_pixels`` so memory stays
    ``O(window_pixels)`` whatever the scene size. With a ``pool`` (a ThreadPoolExecutor),
    windows are labelled and polygonised and the pieces of completed regions unioned on its
    threads (the GIL is released for most of it) while the joining of windows stays in order:
    :meth:`settle` does it, and the regions are the same, in the same order, as without.
    """

    def __init__(self, width: int, *, window_pixels: int = 1 << 20, min_rows: int = 64,
                 pool: Any = None, clock: Any = None) -> None:  # fmt: skip
        self.width = width
        self.clock = clock  # where the pool's seconds are counted
        self.rows = max(min_rows, window_pixels // max(width, 1))
        self.pool = pool
        self.mask = np.zeros((self.rows, width), bool)
        self.prob = np.zeros((self.rows, width), np.uint8)
        self.filled = 0
        self.y = 0  # scene row of self.mask[0]
        self.out = Regions()
        self.parent: dict[int, int] = {}
        self.open: dict[int, _Open] = {}  # root id -> region
        self.prev_row: np.ndarray | None = None  # global ids along the last row seen
        self.next_id = 1
        self.windows: deque[Any] = deque()  # submitted, not yet joined (pooled)
        self.submitted = 0  # windows handed out so far
        self.merged = 0  # windows joined so far

    def add_rows(self, mask: np.ndarray, prob: np.ndarray | None = None) -> None:
        """``mask`` (h, width): foreground where == 1 (0 and 255-nodata are background)."""
        done = 0
        while done < mask.shape[0]:
            take = min(mask.shape[0] - done, self.rows - self.filled)
            np.equal(mask[done : done + take], 1, out=self.mask[self.filled : self.filled + take])
            if prob is not None:
                self.prob[self.filled : self.filled + take] = prob[done : done + take]
            self.filled += take
            done += take
            if self.filled == self.rows:
                self._window()

    def finish(self) -> Regions:
        self._window()
        self.settle()
        for root in list(self.open):
            self._close(root)
        return self.take()

    def take(self, *, resolve: bool = True) -> Regions:
        """The regions closed so far, handed over and forgotten (streaming writers call this
        as they go, so closed polygons never pile up in memory). ``resolve=False``: unions
        still running in the pool stay futures (:meth:`Regions.resolve` waits for them)."""
        out, self.out = self.out, Regions()
        return out.resolve() if resolve else out

    def _find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self.open[ra].members) < len(self.open[rb].members):
            ra, rb = rb, ra
        self.parent[rb] = ra
        big, small = self.open[ra], self.open.pop(rb)
        big.pieces += small.pieces
        big.pixels += small.pixels
        big.prob += small.prob
        big.members += small.members

    def _close(self, root: int) -> None:
        region = self.open.pop(root)
        for g in region.members:
            del self.parent[g]
        geom = region.pieces[0]
        if len(region.pieces) > 1:
            geom = join_pieces(region.pieces) if self.pool is None else (
                self.pool.submit(_timed, self.clock, join_pieces, region.pieces))  # fmt: skip
        self._emit(geom, region.pixels, region.prob)

    def _emit(self, geom: Any, pixels: int, prob: float) -> None:
        self.out.geometries.append(geom)
        self.out.pixels.append(int(pixels))
        self.out.prob_sums.append(float(prob))

    def _window(self) -> None:
        h = self.filled
        if h == 0:
            return
        args = (self.mask[:h], self.prob[:h], self.y, self.y == 0)
        self.y += h
        self.filled = 0
        self.submitted += 1
        if self.pool is None:
            self._join(_window_shapes(*args))
            return
        self.windows.append(self.pool.submit(_timed, self.clock, _window_shapes, *args))
        self.mask = np.zeros((self.rows, self.width), bool)  # the job keeps the old ones
        self.prob = np.zeros((self.rows, self.width), np.uint8)

    def ready(self, upto: int) -> bool:
        """Whether the windows before number ``upto`` are analysed (pooled)."""
        k = upto - self.merged
        return all(f.done() for f in list(self.windows)[: max(k, 0)])

    def settle(self, upto: int | None = None) -> None:
        """Join the analysed windows before number ``upto`` (all: None), in order."""
        upto = self.submitted if upto is None else upto
        while self.merged < upto and self.windows:
            self._join(self.windows.popleft().result())

    def _join(self, w: _WindowShapes) -> None:
        """Add one window's pieces: complete ones out, the others joined across the seam."""
        self.merged += 1
        base = self.next_id - 1  # global id = base + local label
        self.next_id += w.n
        closed = w.closed
        self.out.geometries.extend(w.pieces[closed])
        self.out.pixels.extend(w.pixels[w.values[closed]].tolist())
        self.out.prob_sums.extend(w.probs[w.values[closed]].tolist())
        for piece, label in zip(w.pieces[~closed], w.values[~closed].tolist(), strict=True):
            gid = base + label
            self.parent[gid] = gid
            self.open[gid] = _Open(piece, int(w.pixels[label]), float(w.probs[label]), gid)
        if self.prev_row is not None:
            first = w.first
            touch = (self.prev_row > 0) & (first > 0)
            if touch.any():
                pairs = np.unique(np.stack([self.prev_row[touch], base + first[touch]]), axis=1)
                for a, b in pairs.T:
                    self._union(int(a), int(b))
        # regions that do not reach the last row can grow no further
        still_open = {self._find(base + int(lab)) for lab in w.bottom if lab}
        for root in [r for r in self.open if r not in still_open]:
            self._close(root)
        self.prev_row = np.where(w.last > 0, base + w.last, 0).astype(np.int64)


class RowOpening:
    """Morphological opening (``--open PX``) of masks streamed in rows, exact across windows.

    Opening with a ``(2r+1)``-pixel square removes specks and spurs narrower than that. Output
    lags input by ``2r`` rows: a row is final once the ``2r`` rows below it are known, which is
    what makes the windowed result equal to opening the whole scene at once.
    """

    def __init__(self, radius: int) -> None:
        self.r = radius
        self.structure = np.ones((2 * radius + 1, 2 * radius + 1), bool)
        self.buf: list[np.ndarray] | None = None  # mask (E,n,W), prob (E,n,W) or None, valid
        self.buf_y = 0  # scene row of buf[...][0]
        self.out_y = 0  # next scene row to hand out

    def push(
        self, mask: np.ndarray, prob: np.ndarray | None, valid: np.ndarray, *, last: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Add rows (E, h, W); returns the opened blocks that are now final."""
        parts = [mask, prob, valid]
        if self.buf is None:
            self.buf = parts
        else:
            self.buf = [
                None if b is None else np.concatenate([b, p], axis=-2)
                for b, p in zip(self.buf, parts, strict=True)
            ]
        end = self.buf_y + self.buf[0].shape[-2]
        ready = end if last else end - 2 * self.r
        if ready <= self.out_y:
            return []
        m = self.buf[0]
        fg = np.stack([ndimage.binary_opening(band == 1, self.structure) for band in m])
        a, b = self.out_y - self.buf_y, ready - self.buf_y
        opened = np.where(m[:, a:b] == 255, np.uint8(255), fg[:, a:b].astype(np.uint8))
        prob_out = None if self.buf[1] is None else self.buf[1][:, a:b]
        out = [(opened, prob_out, self.buf[2][a:b])]
        self.out_y = ready
        drop = max(0, ready - 2 * self.r - self.buf_y)
        self.buf = [None if x is None else x[..., drop:, :] for x in self.buf]
        self.buf_y += drop
        return out


def _polygons(shapes: Iterator[tuple[dict, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Shapely polygons and their labels from rasterio's GeoJSON-like output, built in bulk.

    ``shapely.geometry.shape`` one dict at a time costs ~100 µs per polygon; gathering all ring
    coordinates first and creating rings and polygons with one vectorised call each is ~5x faster.
    """
    values: list[float] = []
    points: list[tuple[float, float]] = []
    ring_sizes: list[int] = []
    ring_owner: list[int] = []
    for k, (geom, value) in enumerate(shapes):
        values.append(value)
        for ring in geom["coordinates"]:
            points.extend(ring)
            ring_sizes.append(len(ring))
            ring_owner.append(k)
    if not values:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    xy = np.asarray(points, dtype=np.float64)
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    polygons = shapely.polygons(rings, indices=np.asarray(ring_owner))
    return polygons, np.asarray(values, dtype=np.int64)


def vectorize_array(
    mask: np.ndarray, prob: np.ndarray | None = None, *, window_rows: int = 512
) -> Regions:
    """Regions of an in-memory mask, vectorised ``window_rows`` rows at a time."""
    vec = StreamingVectorizer(mask.shape[1], window_pixels=window_rows * mask.shape[1], min_rows=1)
    for y in range(0, mask.shape[0], window_rows):
        vec.add_rows(mask[y : y + window_rows], None if prob is None else prob[y : y + window_rows])
    return vec.finish()


def iter_raster_rows(path: str | os.PathLike[str], band: int = 1, rows: int = 512) -> Iterator[Any]:
    """Row blocks of one band of a raster, for vectorising a mask file without loading it."""
    with rasterio.open(path) as ds:
        for y in range(0, ds.height, rows):
            yield ds.read(band, window=Window(0, y, ds.width, min(rows, ds.height - y)))


def vectorize_raster(path: str | os.PathLike[str], band: int = 1, *, rows: int = 512) -> Regions:
    """Regions of a mask raster (foreground == 1), read window by window."""
    with rasterio.open(path) as ds:
        vec = StreamingVectorizer(ds.width, window_pixels=rows * ds.width)
    for block in iter_raster_rows(path, band, rows):
        vec.add_rows(block)
    return vec.finish()


def to_crs_coordinates(geoms: Sequence[Any], transform: Affine) -> np.ndarray:
    """Pixel-coordinate geometries -> map coordinates (rotation and shear included)."""
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])

    def apply(xy: np.ndarray) -> np.ndarray:
        return xy @ matrix + np.array([c, f])

    return shapely.transform(np.asarray(geoms, dtype=object), apply)


def area_m2(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Ground area in m² of map-coordinate polygons; NaN without a CRS."""
    if crs is None or len(geoms) == 0:
        return np.full(len(geoms), np.nan)
    from pyproj import CRS, Proj, Transformer

    pcrs = CRS.from_user_input(crs.to_wkt())
    if pcrs.is_geographic:
        geod = pcrs.get_geod()
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms])
    unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
    planar = shapely.area(geoms) * unit * unit
    centroids = shapely.centroid(geoms)
    to_lonlat = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    lon, lat = to_lonlat.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scale = np.asarray(Proj(pcrs).get_factors(lon, lat).areal_scale, dtype=float)
    except Exception:  # a CRS pyproj cannot give factors for: planar area is the best we have
        return planar
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return planar / scale


def _columns(
    regions: Regions,
    *,
    expression: str,
    transform: Affine,
    crs: Any,
    min_area: float = 0.0,
    simplify: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Map-coordinate polygons and their attributes, ``min_area`` and ``simplify`` applied."""
    geoms = to_crs_coordinates(regions.geometries, transform)
    areas = area_m2(geoms, crs)
    pixels = np.asarray(regions.pixels, dtype=np.int64)
    mean = np.asarray(regions.prob_sums, dtype=float) / np.maximum(pixels, 1) / 255.0
    keep = np.ones(len(geoms), bool) if min_area <= 0 else areas >= min_area
    geoms = geoms[keep]
    if simplify > 0:
        # Douglas-Peucker keeps different vertices from a different starting vertex, and where
        # a ring starts depends on how the region was cut into pieces (windows, split bands):
        # the canonical start first, so the same polygon always simplifies the same way
        geoms = shapely.simplify(shapely.normalize(geoms), simplify, preserve_topology=True)
        # normalize made exteriors clockwise: back to GDAL's rings (clockwise in pixel space)
        geoms = shapely.orient_polygons(geoms, exterior_cw=transform.determinant > 0)
    columns = {
        "expression": [expression] * int(keep.sum()),
        "area_m2": areas[keep],
        "pixels": pixels[keep],
        "mean_prob": mean[keep].round(4),
    }
    return geoms, columns


def regions_to_frame(regions: Regions, *, crs: Any, **options: Any) -> Any:
    """A GeoDataFrame with ``expression``, ``area_m2``, ``pixels``, ``mean_prob`` per polygon
    (``options``: those of :func:`_columns`)."""
    import geopandas as gpd

    geoms, columns = _columns(regions, crs=crs, **options)
    return gpd.GeoDataFrame(
        columns, geometry=gpd.GeoSeries(geoms, crs=None if crs is None else crs.to_wkt())
    )


def _spool_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("expression", pa.string()), ("area_m2", pa.float64()),
                      ("pixels", pa.int64()), ("mean_prob", pa.float64()),
                      ("geometry", pa.binary())])  # fmt: skip


def regions_to_batch(regions: Regions, *, crs: Any, **options: Any) -> Any:
    """:func:`regions_to_frame`'s table as an Arrow record batch, the geometry as WKB: what
    the spool holds. Built from numpy buffers, without pandas or geopandas: ``pa.array`` itself
    imports pandas to inspect its argument, and its ~50 MB then stayed in a large run from its
    first spooled batch on, while every stage's buffers were live."""
    import pyarrow as pa

    geoms, columns = _columns(regions, crs=crs, **options)
    wkb = list(shapely.to_wkb(geoms))
    arrays = [
        _binary_array(pa.string(), [options["expression"].encode()] * len(wkb)),
        _numeric_array(columns["area_m2"], nan_is_null=True),  # no CRS: NaN, written as nulls
        _numeric_array(columns["pixels"]),
        _numeric_array(columns["mean_prob"]),
        _binary_array(pa.binary(), wkb),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=_spool_schema())


def _numeric_array(values: np.ndarray, *, nan_is_null: bool = False) -> Any:
    """An Arrow array over ``values``' buffer (``nan_is_null``: NaN -> null, as geopandas
    writes it)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))
    validity = None
    if nan_is_null and np.isnan(values).any():
        validity = pa.py_buffer(np.packbits(~np.isnan(values), bitorder="little"))
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(values)])


def _binary_array(kind: Any, items: list[bytes]) -> Any:
    """A string or binary Arrow array of ``items``, which total under 2 GiB (32-bit offsets,
    as ``pa.array`` makes them; a spool batch is usually about :data:`SPOOL_VERTICES`
    vertices, 16 bytes each, but holds at least every polygon one add_rows call closed)."""
    import pyarrow as pa

    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise FiacliError(
            f"{len(items)} polygons with {offsets[-1] / 2**30:.1f} GiB of geometry in one batch: "
            "too large to write (a 2 GiB limit); write a raster instead, or split the scene"
        )
    data = pa.py_buffer(b"".join(items))
    return pa.Array.from_buffers(
        kind, len(items), [None, pa.py_buffer(offsets.astype(np.int32)), data]
    )


def write_vectors(frame: Any, path: str | os.PathLike[str], *, dst_crs: Any = None) -> None:
    """Write polygons by extension (GeoPackage, GeoJSON, GeoParquet, Shapefile, FlatGeobuf)."""
    suffix = os.path.splitext(str(path))[1].lower()
    if dst_crs is not None and frame.crs is not None:
        frame = frame.to_crs(dst_crs)
    if suffix == ".parquet":
        frame.to_parquet(path)
        return
    if suffix not in VECTOR_DRIVERS:
        raise FiacliError(f"unknown vector format {suffix!r}")
    with warnings.catch_warnings():
        # pixel-coordinate polygons (--allow-ungeoreferenced) have no CRS on purpose
        warnings.filterwarnings("ignore", message=".*crs.* not provided", category=UserWarning)
        frame.to_file(
            path,
            driver=VECTOR_DRIVERS[suffix],
            engine="pyogrio",
            layer="polygons" if suffix == ".gpkg" else None,
            geometry_type="Polygon",
        )


class PolygonWriter:
    """Polygons of several expressions, from mask rows streamed top to bottom, to any number of
    vector outputs, with memory for one batch of polygons whatever the scene holds.

    Closed polygons stay in memory while they total fewer than :data:`SPOOL_VERTICES` vertices
    (most scenes: written directly at the end, no extra file). Past that they go, a batch at a
    time, to a hidden Arrow stream in ``folder`` (the outputs' folder, so a full disk shows
    there), and :meth:`write` streams that spool into each requested format,
    :data:`COPY_FEATURES` at a time (reprojected on the way for ``dst_crs``). Use as a context
    manager: the spool is removed on exit, whatever happened.
    """

    def __init__(
        self,
        width: int,
        expressions: Sequence[str],
        folder: str | os.PathLike[str],
        *,
        transform: Affine,
        crs: Any,
        min_area: float = 0.0,
        simplify: float = 0.0,
        batch_vertices: int | None = None,
        window_pixels: int = 1 << 20,
        workers: int = 0,
        flow: Any = None,
    ) -> None:
        self.expressions = list(expressions)
        self.workers = workers
        self.pool = None
        if workers > 0:
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fiacli-polygonize")
        if workers > 0 and flow is None:
            from fiacli.geo.flow import Flow

            flow = Flow()
        self.flow = flow
        pool_clock = flow.clock("polygonize", workers) if workers > 0 else None
        self.vectorizers = [
            StreamingVectorizer(
                width, window_pixels=window_pixels, pool=self.pool, clock=pool_clock
            )  # fmt: skip
            for _ in self.expressions
        ]
        self.clock = flow.clock("vectorize", max(workers, 1)) if flow is not None else None
        self.feed_clock = flow.clock("write") if flow is not None else None
        self.spool_clock = flow.clock("spool") if flow is not None else None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)  # rows: 2 x 64 x width, 2 B
        self._closed: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._threads: list[Any] = []
        self._backlog = max(workers, 1)  # windows analysed ahead of the joining
        self.counts = [0] * len(self.expressions)
        self.frame_options = {"transform": transform, "crs": crs, "min_area": min_area,
                              "simplify": simplify}  # fmt: skip
        self.batch_vertices = SPOOL_VERTICES if batch_vertices is None else batch_vertices
        self.pending = 0  # vertices closed and not yet spooled, all expressions
        self.closed = [Regions() for _ in self.expressions]  # closed, not yet spooled
        self.in_memory: list[Any] | None = None  # the frames, when nothing had to be spooled
        self.in_memory_all: Any = None  # and all of them in one frame, written to every output
        sweep_stale(folder)  # spools of killed runs
        fd, name = tempfile.mkstemp(prefix=f".fiacli-polygons-{owner_tag()}-",
                                    suffix=".arrows", dir=folder)  # fmt: skip
        os.close(fd)
        self.spool = name
        self._spool_file: Any = None  # the spool, open for writing from the first batch on
        self._spool_writer: Any = None  # and its Arrow stream writer
        self._exited = False  # past __exit__: the spool is gone and is not opened again
        self.spooled = 0

    def __enter__(self) -> PolygonWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if any(t.is_alive() for t in self._threads):
            self.flow.stop.set()
            for thread in self._threads:
                if thread.is_alive():
                    thread.join(timeout=60)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self._exited = True
        with contextlib.suppress(OSError):  # a full disk may fail the last write again
            self._close_spool()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool)

    def add_rows(self, band: int, mask: np.ndarray, prob: np.ndarray | None = None) -> None:
        """Mask rows ``(h, width)`` of expression ``band`` (see StreamingVectorizer.add_rows).

        With ``workers``, the rows (which must not change afterwards) are queued for the
        vectorising thread and this returns at once; :meth:`drain` waits for them.
        """
        if self.pool is None:
            vec = self.vectorizers[band]
            vec.add_rows(mask, prob)
            self._account(band, vec.take())
            return
        if not self._threads:
            self._threads = [self.flow.spawn("vectorize", self._vectorize),
                             self.flow.spawn("spool", self._spooler)]  # fmt: skip
        self.flow.put(self._queue, (band, mask, prob), self.feed_clock)

    def _vectorize(self) -> None:
        """The vectorising thread: rows in, windows out to the pool, joined in order; what
        each add_rows call closed goes on to the spooling thread, unions still running."""
        from fiacli.geo.flow import END, POLL_S

        events: deque[tuple[int, int]] = deque()  # (band, windows submitted) per add_rows call
        clock = self.clock
        while True:
            if events and (self._ready(events[0]) or self._outstanding() >= self._backlog):
                self._settle(*events.popleft())
                continue
            t0 = time.perf_counter()
            try:
                item = self._queue.get(timeout=0.005 if events else POLL_S)
            except queue.Empty:
                clock.add(wait_in=time.perf_counter() - t0)
                self.flow.check()
                continue
            clock.add(wait_in=time.perf_counter() - t0)
            if item is END:
                break
            t0 = time.perf_counter()
            band, mask, prob = item
            vec = self.vectorizers[band]
            vec.add_rows(mask, prob)
            events.append((band, vec.submitted))
            clock.add(busy=time.perf_counter() - t0, items=1)
        while events:
            self._settle(*events.popleft())
        self.flow.put(self._closed, END, clock)

    def _ready(self, event: tuple[int, int]) -> bool:
        band, upto = event
        return self.vectorizers[band].ready(upto)

    def _outstanding(self) -> int:
        return sum(v.submitted - v.merged for v in self.vectorizers)

    def _settle(self, band: int, upto: int) -> None:
        t0 = time.perf_counter()
        vec = self.vectorizers[band]
        vec.settle(upto)
        chunk = vec.take(resolve=False)
        self.clock.add(busy=time.perf_counter() - t0)
        self.flow.put(self._closed, (band, chunk), self.clock)

    def _spooler(self) -> None:
        """The spooling thread: closed polygons in call order, counted, spooled by batches."""
        from fiacli.geo.flow import END

        while True:
            item = self.flow.get(self._closed, self.spool_clock)
            if item is END:
                return
            t0 = time.perf_counter()
            band, chunk = item
            self._account(band, chunk.resolve())
            self.spool_clock.add(busy=time.perf_counter() - t0, items=1)

    def drain(self) -> None:
        """Wait until every row given to :meth:`add_rows` is vectorised (with ``workers``)."""
        if not self._threads:
            return
        from fiacli.geo.flow import END

        self.flow.put(self._queue, END)
        for thread in self._threads:
            while thread.is_alive():
                self.flow.check()
                thread.join(timeout=0.05)
        self.flow.check()
        self._threads = []

    def _account(self, band: int, closed: Regions) -> None:
        """The polygons ``band`` just closed: kept, and all of them spooled past the vertex
        budget (the same batches whatever the number of threads)."""
        if len(closed):
            self.pending += int(shapely.get_num_coordinates(closed.geometries).sum())
            self.closed[band].extend(closed)
        if self.pending >= self.batch_vertices:
            for b in range(len(self.vectorizers)):
                self._spool(b, self._batch(b, self.closed[b]))
                self.closed[b] = Regions()
            self.pending = 0

    def finish(self) -> list[int]:
        """Close every region; returns the number of polygons kept per expression."""
        self.drain()
        regions = []
        for b, v in enumerate(self.vectorizers):
            self.closed[b].extend(v.finish())
            regions.append(self.closed[b])
            self.closed[b] = Regions()
        if self.spooled:
            for band, r in enumerate(regions):
                self._spool(band, self._batch(band, r))
            self._close_spool()
        else:
            import pandas as pd

            frames = [self._frame(b, r) for b, r in enumerate(regions)]
            self.in_memory = frames
            self.in_memory_all = pd.concat(frames, ignore_index=True)
            self.counts = [len(f) for f in frames]
        return self.counts

    def _frame(self, band: int, regions: Regions) -> Any:
        return regions_to_frame(regions, expression=self.expressions[band], **self.frame_options)

    def _batch(self, band: int, regions: Regions) -> Any:
        return regions_to_batch(regions, expression=self.expressions[band], **self.frame_options)

    def _spool(self, band: int, batch: Any) -> None:
        if batch.num_rows == 0:
            return
        if self._spool_writer is None:
            if self._exited:  # a spooling thread that outlived __exit__'s join
                raise FiacliError("the polygon spool was closed")
            import pyarrow as pa

            self._spool_file = pa.OSFile(self.spool, "wb")
            self._spool_writer = pa.ipc.new_stream(self._spool_file, batch.schema)
        self._spool_writer.write_batch(batch)
        self.counts[band] += batch.num_rows
        self.spooled += batch.num_rows

    def _close_spool(self) -> None:
        writer, self._spool_writer = self._spool_writer, None
        sink, self._spool_file = self._spool_file, None
        try:
            if writer is not None:
                writer.close()  # the end-of-stream marker
        finally:
            if sink is not None:
                sink.close()

    def _spool_batches(self) -> Iterator[Any]:
        """The spooled polygons in order, :data:`COPY_FEATURES` at a time."""
        import pyarrow as pa

        with pa.OSFile(self.spool, "rb") as source:
            for batch in pa.ipc.open_stream(source):
                for start in range(0, batch.num_rows, COPY_FEATURES):
                    yield batch.slice(start, COPY_FEATURES)

    def frames(self) -> list[Any]:
        """All polygons, one GeoDataFrame per expression (for the preview; read back from the
        spool when there is one)."""
        if self.in_memory is not None:
            return self.in_memory
        import geopandas as gpd
        import pyarrow as pa

        table = pa.Table.from_batches(list(self._spool_batches()), _spool_schema())
        crs = self.frame_options["crs"]
        frame = gpd.GeoDataFrame(
            table.drop_columns(["geometry"]).to_pandas(),
            geometry=gpd.GeoSeries.from_wkb(table["geometry"].to_numpy(zero_copy_only=False),
                                            crs=None if crs is None else crs.to_wkt()),
        )  # fmt: skip
        return [frame[frame["expression"] == e].reset_index(drop=True) for e in self.expressions]

    def write(self, path: str | os.PathLike[str], *, dst_crs: Any = None) -> None:
        """Write every polygon to ``path`` (format by extension), batch by batch."""
        if self.in_memory is not None:
            write_vectors(self.in_memory_all, path, dst_crs=dst_crs)
            return
        suffix = os.path.splitext(str(path))[1].lower()
        if suffix not in VECTOR_DRIVERS:
            raise FiacliError(f"unknown vector format {suffix!r}")
        schema = _spool_schema()
        src_crs = self.frame_options["crs"]
        with contextlib.closing(self._spool_batches()) as spooled:  # closes the file on error
            batches, crs = _reprojected(spooled, schema, src_crs, dst_crs)
            if suffix == ".parquet":
                _write_geoparquet(batches, schema, path, crs)
                return
            import pyarrow as pa
            from pyogrio import write_arrow

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*crs.* not provided")
                write_arrow(
                    pa.RecordBatchReader.from_batches(schema, batches), path,
                    driver=VECTOR_DRIVERS[suffix], geometry_name="geometry",
                    geometry_type="Polygon", crs=None if crs is None else crs.to_wkt(),
                    layer="polygons" if suffix == ".gpkg" else None,
                )  # fmt: skip


def _reprojected(batches: Iterator[Any], schema: Any, crs: Any, dst_crs: Any) -> tuple:
    """Spool batches (``schema``, WKB ``geometry``), reprojected to ``dst_crs`` when given;
    returns (batch iterator, output pyproj CRS or None)."""
    from pyproj import CRS

    src = None if crs is None else CRS.from_user_input(crs.to_wkt())
    dst = CRS.from_user_input(dst_crs) if dst_crs is not None and src is not None else src
    if dst is None or dst == src:
        return batches, dst

    def reprojected() -> Iterator[Any]:
        import geopandas as gpd
        import pyarrow as pa

        where = schema.get_field_index("geometry")
        for batch in batches:
            wkb = batch.column(where).to_numpy(zero_copy_only=False)
            wkb = gpd.GeoSeries.from_wkb(wkb, crs=src).to_crs(dst).to_wkb().to_numpy()
            columns = batch.columns
            columns[where] = pa.array(wkb, pa.binary())
            yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return reprojected(), dst


def _write_geoparquet(batches: Iterator[Any], schema: Any, path: Any, crs: Any) -> None:
    """GeoParquet 1.0 (WKB, the ``geo`` metadata geopandas and GDAL read), batch by batch."""
    import pyarrow.parquet as pq

    column = {"encoding": "WKB", "geometry_types": ["Polygon"],
              "crs": None if crs is None else crs.to_json_dict()}  # fmt: skip
    geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(batch.replace_schema_metadata(schema.metadata))

"""Windowed vectorisation equals whole-scene vectorisation; areas in m²; streamed opening."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio.features
import shapely
from _oracle import ellipsoid_cell_area
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from fiacli.geo import vectorize
from fiacli.geo.vectorize import (
    PolygonWriter,
    RowOpening,
    area_m2,
    regions_to_frame,
    to_crs_coordinates,
    vectorize_array,
    write_vectors,
)


def whole_scene_polygons(mask: np.ndarray) -> list:
    """The reference: GDAL polygonize (4-connected) over the entire mask at once."""
    fg = (mask == 1).astype(np.uint8)
    shapes = rasterio.features.shapes(fg, mask=fg > 0, connectivity=4)
    return [shapely.geometry.shape(g) for g, _ in shapes]


def canonical(geoms) -> list[str]:
    """Vertex for vertex (rings start and turn the same way): no vertex left on the seams."""
    return sorted(shapely.to_wkt(shapely.normalize(g)) for g in geoms)


def blobs(h: int, w: int, seed: int, level: float = 0.55) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.uniform_filter(rng.random((h, w)), 4) > level).astype(np.uint8)


MASKS = {
    "blobs": blobs(90, 130, 0),
    "noise": (np.random.default_rng(1).random((40, 60)) > 0.5).astype(np.uint8),
    "tall": blobs(200, 17, 2, 0.5),
    # above the percolation threshold: regions spanning every window, with holes on the seams
    "percolating": (np.random.default_rng(3).random((150, 200)) > 0.45).astype(np.uint8),
}


def ring_with_diagonal_hole() -> np.ndarray:
    m = np.zeros((9, 9), np.uint8)
    m[1:8, 1:8] = 1
    m[3:6, 3:6] = 0  # a hole crossing window seams
    m[2, 2] = 0  # bg touching the hole only diagonally: stays a separate hole under 4-conn.
    m[8, 8] = 1  # touches the square at a corner only: a separate polygon
    return m


@pytest.mark.parametrize("join", ["coverage", "overlay"])
@pytest.mark.parametrize("name", sorted(MASKS) + ["ring"])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 64, 1000])
def test_windowed_equals_whole_scene(name, rows, join, monkeypatch):
    """Whichever way regions cut by the window seams are joined (by size: forced here)."""
    monkeypatch.setattr(vectorize, "COVERAGE_UNION_VERTICES", 0 if join == "coverage" else 2**62)
    mask = ring_with_diagonal_hole() if name == "ring" else MASKS[name]
    prob = np.full(mask.shape, 200, np.uint8)
    regions = vectorize_array(mask, prob, window_rows=rows)
    expected = whole_scene_polygons(mask)
    assert len(regions) == len(expected)
    assert canonical(regions.geometries) == canonical(expected)
    for g, n, p in zip(regions.geometries, regions.pixels, regions.prob_sums, strict=True):
        assert g.is_valid and g.geom_type == "Polygon"
        assert g.area == n  # one pixel is one unit of area in pixel coordinates
        assert p == 200 * n


@pytest.mark.parametrize("kind", ["sparse", "noisy", "edges", "empty"])
def test_a_window_polygonises_only_its_foreground_box_with_the_same_result(kind):
    """_window_shapes polygonises the box around the foreground: the pieces, their order and
    their labels must be those of polygonising the whole window (the reference, here)."""
    from fiacli.geo import polygonize
    from fiacli.geo.vectorize import FOUR, _window_shapes

    rng = np.random.default_rng(["sparse", "noisy", "edges", "empty"].index(kind))
    for _ in range(25):
        h, w = int(rng.integers(3, 120)), int(rng.integers(3, 200))
        mask = np.zeros((h, w), bool)
        if kind == "sparse":
            for _ in range(int(rng.integers(1, 5))):
                r, c = rng.integers(0, h), rng.integers(0, w)
                mask[r : r + rng.integers(1, 9), c : c + rng.integers(1, 9)] = True
        elif kind == "noisy":
            mask = ndimage.uniform_filter(rng.random((h, w)), 3) > 0.55
        elif kind == "edges":
            mask[0], mask[:, -1] = rng.random(w) > 0.5, rng.random(h) > 0.5
        y0 = int(rng.integers(0, 10_000))
        got = _window_shapes(mask, np.zeros((h, w), np.uint8), y0, False)
        labels, n = ndimage.label(mask, structure=FOUR)
        shifted = Affine.translation(0, y0)
        if polygonize.available():
            pieces, values = polygonize.polygonize(labels, shifted)
        else:
            shapes = rasterio.features.shapes(labels, mask=labels > 0, connectivity=4,
                                              transform=shifted)  # fmt: skip
            pieces = [shapely.geometry.shape(g) for g, _ in shapes]
            values = np.array([v for _, v in rasterio.features.shapes(
                labels, mask=labels > 0, connectivity=4)], dtype=np.int64)  # fmt: skip
        assert got.n == n and got.values.tolist() == list(values)
        assert [g.wkb for g in got.pieces] == [g.wkb for g in pieces]
        assert (got.first == labels[0]).all() and (got.last == labels[-1]).all()
        assert got.bottom.tolist() == np.unique(labels[-1]).tolist()
        assert got.pixels.tolist() == np.bincount(labels[mask], minlength=n + 1).tolist()


def test_pieces_joined_across_a_seam_and_the_overlay_fallbacks(monkeypatch):
    """The coverage path joins pieces that meet along a seam; pieces that do not touch (no one
    polygon), and long straight seam edges (a uniform region: a vertex per pixel of width), go
    to the overlay union instead, with the same result."""
    from shapely.geometry import box

    from fiacli.geo.vectorize import join_pieces

    monkeypatch.setattr(vectorize, "COVERAGE_UNION_VERTICES", 0)  # these are tiny
    refused: list[bool] = []  # per call of the coverage path: whether it declined the cut
    real_cut = vectorize._cut_seam_edges

    def cut(pieces, most):
        out = real_cut(pieces, most)
        refused.append(out is None)
        return out

    monkeypatch.setattr(vectorize, "_cut_seam_edges", cut)
    across_a_seam = join_pieces([box(0, 0, 4, 2), box(1, 2, 3, 5)])
    assert across_a_seam.area == 14 and shapely.get_num_coordinates(across_a_seam) == 9
    apart = join_pieces([box(0, 0, 4, 2), box(6, 2, 8, 5)])
    assert apart.geom_type == "MultiPolygon" and apart.area == 14
    wide = [box(0, 0, 10_000, 2), box(0, 2, 10_000, 4)]  # 10 vertices, 40,000 after cutting
    assert shapely.equals(join_pieces(wide), box(0, 0, 10_000, 4))
    assert refused == [False, False, True]


def test_nodata_and_background_make_no_polygons():
    mask = np.full((20, 20), 255, np.uint8)
    mask[5:10, 5:10] = 0
    assert len(vectorize_array(mask, window_rows=4)) == 0


def test_mean_probability_is_per_region():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:3, 0:3] = 1
    mask[6:10, 6:10] = 1
    prob = np.zeros((10, 10), np.uint8)
    prob[0:3, 0:3] = 100
    prob[6:10, 6:10] = 250
    regions = vectorize_array(mask, prob, window_rows=2)
    means = sorted(p / n for p, n in zip(regions.prob_sums, regions.pixels, strict=True))
    assert means == [100, 250]


def test_rotated_transform_is_applied_to_every_vertex():
    t = Affine.translation(1000, 2000) @ Affine.rotation(30) @ Affine.scale(2, -2)
    square = shapely.box(0, 0, 3, 2)
    (moved,) = to_crs_coordinates([square], t)
    for (px, py), (x, y) in zip(square.exterior.coords, moved.exterior.coords, strict=True):
        assert (x, y) == pytest.approx(t @ (px, py))


def test_area_is_ground_square_metres_in_a_geographic_crs():
    cell = shapely.box(10.0, 45.0, 10.01, 45.01)  # about 787 m x 1112 m at 45°N
    (area,) = area_m2(np.array([cell]), CRS.from_epsg(4326))
    assert area == pytest.approx(ellipsoid_cell_area(45.0, 45.01, 0.01), rel=1e-6)
    assert 850_000 < area < 900_000


def test_area_is_corrected_for_projection_scale():
    utm = shapely.box(500000, 4_000_000, 500100, 4_000_100)  # 100 m x 100 m at the central meridian
    (a_utm,) = area_m2(np.array([utm]), CRS.from_epsg(32633))
    assert a_utm == pytest.approx(1e4 / 0.9996**2, rel=1e-4)  # UTM's scale factor on the CM
    # Web Mercator inflates lengths by 1/cos(lat): 100 "m" boxes at 60°N are 50 m on the ground
    y60 = 6378137.0 * math.log(math.tan(math.pi / 4 + math.radians(60) / 2))
    merc = shapely.box(0, y60, 100, y60 + 100)
    (a_merc,) = area_m2(np.array([merc]), CRS.from_epsg(3857))
    assert a_merc == pytest.approx(2500, rel=0.01)
    assert np.isnan(area_m2(np.array([utm]), None)).all()


def test_frame_filters_by_area_and_simplifies():
    mask = np.zeros((30, 30), np.uint8)
    mask[1:3, 1:3] = 1  # 4 px = 1 m² at 0.5 m
    mask[10:25, 10:25] = 1
    mask[10, 25] = 1  # a 1-px notch that simplify with a coarse tolerance removes
    regions = vectorize_array(mask, np.full(mask.shape, 255, np.uint8))
    t = Affine(0.5, 0, 500000, 0, -0.5, 4_000_000)
    frame = regions_to_frame(regions, expression="x", transform=t, crs=CRS.from_epsg(32633),
                             min_area=2.0, simplify=1.0)  # fmt: skip
    assert len(frame) == 1 and frame.crs.to_epsg() == 32633
    row = frame.iloc[0]
    assert row["pixels"] == 15 * 15 + 1 and row["mean_prob"] == 1.0
    assert row["area_m2"] == pytest.approx(226 * 0.25 / 0.9996**2, rel=1e-3)
    assert shapely.get_num_coordinates(row.geometry) < 8


@pytest.mark.parametrize("e", [-0.5, 0.5])  # north-up, and pixel rows going up
def test_simplified_rings_keep_the_orientation_of_unsimplified_ones(e):
    mask = np.zeros((30, 30), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:15, 10:15] = 0  # a hole
    regions = vectorize_array(mask, np.full(mask.shape, 255, np.uint8))
    t = Affine(0.5, 0, 500000, 0, e, 4_000_000)
    frames = [regions_to_frame(regions, expression="x", transform=t, crs=CRS.from_epsg(32633),
                               simplify=tol) for tol in (0.0, 0.1)]  # fmt: skip
    plain, simplified = (f.geometry.iloc[0] for f in frames)
    assert simplified.exterior.is_ccw == plain.exterior.is_ccw == (e < 0)
    assert simplified.interiors[0].is_ccw == plain.interiors[0].is_ccw != plain.exterior.is_ccw


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet", ".shp", ".fgb"])
def test_every_vector_format_round_trips_even_when_empty(tmp_path, suffix):
    import geopandas as gpd

    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:6] = 1
    t = Affine(1, 0, 0, 0, -1, 8)
    for n, m in ((1, mask), (0, np.zeros_like(mask))):
        frame = regions_to_frame(vectorize_array(m), expression="a ship", transform=t,
                                 crs=CRS.from_epsg(32633))  # fmt: skip
        path = tmp_path / f"out{n}{suffix}"
        write_vectors(frame, path, dst_crs="EPSG:4326")
        back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
        assert len(back) == n and back.crs.to_epsg() == 4326
        if n:
            assert back.iloc[0]["expression"] == "a ship"
            assert back.iloc[0]["pixels"] == 8


def write_polygons(folder, masks, path, *, batch_vertices, dst_crs=None, rows=7, fail=False,
                   crs=CRS.from_epsg(32633)):  # fmt: skip
    """Stream ``masks`` (one per expression) through a PolygonWriter into ``path``; returns the
    polygons per expression and how many spool writes happened while streaming."""
    t = Affine(0.5, 0, 500000, 0, -0.5, 4_000_000)
    names = [f"object {k}" for k in range(len(masks))]
    spool_writes = 0
    with PolygonWriter(masks[0].shape[1], names, folder, transform=t, crs=crs,
                       batch_vertices=batch_vertices, window_pixels=1) as writer:  # fmt: skip
        for y in range(0, masks[0].shape[0], rows):
            for band, m in enumerate(masks):
                before = writer.spooled
                writer.add_rows(band, m[y : y + rows], np.full_like(m[y : y + rows], 200))
                spool_writes += writer.spooled != before
                held = writer.vectorizers[band].out.geometries  # spooled, not piling up
                assert shapely.get_num_coordinates(held).sum() < batch_vertices
            if fail and writer.spooled:  # Ctrl-C with polygons on disk
                raise KeyboardInterrupt
        counts = writer.finish()
        writer.write(path, dst_crs=dst_crs)
    return counts, spool_writes


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet", ".shp", ".fgb"])
@pytest.mark.parametrize("dst_crs", [None, "EPSG:4326"])
def test_polygons_spooled_in_batches_equal_one_batch(tmp_path, suffix, dst_crs):
    import geopandas as gpd

    masks = [blobs(400, 70, 5), blobs(400, 70, 6, 0.6)]

    def table(path):
        frame = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
        rows = zip(frame["expression"], frame["pixels"], frame["area_m2"].round(3),
                   [canonical([g])[0] for g in frame.geometry.values], strict=True)  # fmt: skip
        return frame.crs, sorted(rows)

    small, writes = write_polygons(tmp_path, masks, tmp_path / f"small{suffix}",
                                   batch_vertices=200, dst_crs=dst_crs)  # fmt: skip
    one, none = write_polygons(tmp_path, masks, tmp_path / f"one{suffix}",
                               batch_vertices=10**9, dst_crs=dst_crs)  # fmt: skip
    assert small == one and min(one) > 30 and writes >= 4 and none == 0
    crs, rows = table(tmp_path / f"small{suffix}")
    assert crs.to_epsg() == (4326 if dst_crs else 32633)
    assert (crs, rows) == table(tmp_path / f"one{suffix}") and len(rows) == sum(one)
    assert not list(tmp_path.glob(".fiacli-polygons-*"))  # the spool is gone


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet", ".fgb"])
def test_spooled_polygons_without_a_crs_have_null_areas_as_in_memory(tmp_path, suffix):
    """No CRS (--allow-ungeoreferenced): area_m2 is unknown, a null in every format whether the
    polygons were spooled or not (a NaN would drop the column from GeoJSON)."""
    import geopandas as gpd

    masks = [blobs(400, 70, 5)]
    frames = []
    for name, budget in (("small", 200), ("one", 10**9)):
        path = tmp_path / f"{name}{suffix}"
        write_polygons(tmp_path, masks, path, batch_vertices=budget, crs=None)
        frames.append(gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path))
    small, one = frames
    assert list(small.columns) == list(one.columns) and "area_m2" in small.columns
    assert small["area_m2"].isna().all() and one["area_m2"].isna().all()
    assert sorted(small["pixels"]) == sorted(one["pixels"]) and len(small) > 30
    if suffix == ".parquet":  # nulls, not NaN (pandas reads both as NaN)
        import pyarrow.parquet as pq

        column = pq.read_table(tmp_path / f"small{suffix}").column("area_m2")
        assert column.null_count == len(column)


def test_spooling_polygons_does_not_load_pandas(tmp_path):
    """The spool's batches are built from numpy buffers: ``pa.array`` would import pandas,
    whose ~50 MB then stayed in a large run, with every stage's buffers live, from its first
    spooled batch on."""
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from scipy import ndimage
from affine import Affine
from rasterio.crs import CRS
from fiacli.geo.vectorize import PolygonWriter
mask = (ndimage.uniform_filter(np.random.default_rng(5).random((300, 70)), 4) > 0.55)
mask = mask.astype(np.uint8)
t = Affine(0.5, 0, 500000, 0, -0.5, 4_000_000)
with PolygonWriter(70, ["a"], {str(tmp_path)!r}, transform=t, crs=CRS.from_epsg(32633),
                   batch_vertices=100, window_pixels=1) as writer:
    for y in range(0, 300, 10):
        writer.add_rows(0, mask[y : y + 10], np.full_like(mask[y : y + 10], 200))
    writer.finish()
    assert writer.spooled > 30, writer.spooled
    print("pandas" in sys.modules, "geopandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == ["False", "False"]


def test_polygon_spool_is_removed_when_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_polygons(
            tmp_path, [blobs(400, 30, 1)], tmp_path / "x.gpkg", batch_vertices=50, fail=True
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("block", [1, 5, 16, 200])
def test_streamed_opening_equals_whole_scene_opening(radius, block):
    mask = blobs(70, 50, 3, 0.5)
    mask[:, :3] = 255  # nodata stays nodata
    structure = np.ones((2 * radius + 1,) * 2, bool)
    expected = ndimage.binary_opening(mask == 1, structure).astype(np.uint8)
    expected[mask == 255] = 255
    opener = RowOpening(radius)
    got = []
    for y in range(0, 70, block):
        rows = mask[None, y : y + block]
        last = y + block >= 70
        for m, _, _ in opener.push(rows, None, np.ones(rows.shape[1:], bool), last=last):
            got.append(m[0])
    assert np.array_equal(np.concatenate(got), expected)
    assert (expected == 1).sum() < (mask == 1).sum()  # the opening did remove something

"""``segment_raster`` end to end with the oracle model: tiling, nodata, georeferencing, outputs.

The oracle's output is a fixed function of the pixels it is shown (see ``_oracle.py``), so what a
correct pipeline must write is that function applied to the whole scene, computed independently.
"""

from __future__ import annotations

import errno
import gc
import json
import tracemalloc
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from _oracle import Oracle, ellipsoid_cell_area, random_rgb, read, whole_scene, write_tif
from affine import Affine
from scipy import ndimage

from fiacli.app.pipeline import segment_raster
from fiacli.core.errors import FiacliError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def run(tmp_path, scene, expressions="red", outputs=("out.tif",), *, oracle=None, **kw):
    oracle = oracle or Oracle()
    outs = [tmp_path / o for o in outputs]
    if "probabilities" in kw and kw["probabilities"] is not None:
        kw["probabilities"] = tmp_path / kw["probabilities"]
    result = segment_raster(scene, expressions, outs, predictor=oracle, **kw)
    return result, oracle


GRIDS = [
    # (height, width, chip, overlap): odd sizes, exact fits, one-pixel overhangs, < one chip
    (150, 201, 64, 16),
    (97, 131, 32, 24),
    (40, 45, 16, 15),  # stride 1: every pixel in up to 16 chips per axis
    (30, 20, 64, 8),
    (64, 64, 64, 0),
    (65, 129, 64, 0),
    (200, 70, 48, 20),
]


@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
@pytest.mark.parametrize(("h", "w", "chip", "overlap"), GRIDS)
def test_pointwise_oracle_is_reproduced_exactly(tmp_path, h, w, chip, overlap, blend):
    rgb = random_rgb(h, w, seed=h + w)
    scene = write_tif(tmp_path / "s.tif", rgb)
    result, oracle = run(tmp_path, scene, probabilities="p.tif", chip=chip, overlap=overlap,
                         blend=blend)  # fmt: skip
    prob, mask = read(tmp_path / "p.tif", 1), read(tmp_path / "out.tif", 1)
    assert np.array_equal(prob, rgb[0])  # round(red / 255 * 255) == red, at every pixel
    assert np.array_equal(mask, (rgb[0] >= 128).astype(np.uint8))  # red/255 > 0.5
    assert all(b[2:] == (chip, chip) for b in oracle.batches)  # small scenes are padded
    assert result.chips["predicted"] == result.chips["total"]


@pytest.mark.parametrize(("h", "w"), [(150, 201), (97, 64)])
def test_context_oracle_exact_with_crop_and_close_with_cosine(tmp_path, h, w):
    rgb = random_rgb(h, w, seed=3)
    scene = write_tif(tmp_path / "s.tif", rgb)
    expected = np.rint(whole_scene(rgb, radius=2) * 255).astype(int)
    errors = {}
    for blend in ("crop", "cosine", "none"):
        run(tmp_path, scene, outputs=(f"{blend}.tif",), probabilities=f"{blend}-p.tif",
            oracle=Oracle(radius=2), chip=48, overlap=16, blend=blend)  # fmt: skip
        errors[blend] = np.abs(read(tmp_path / f"{blend}-p.tif", 1).astype(int) - expected)
    # crop keeps only pixels at least overlap/2 = 8 >= radius px from any inner chip border
    assert errors["crop"].max() == 0
    # cosine fades chip borders out: small error, and smaller than plain averaging
    assert errors["cosine"].max() <= 6
    assert errors["cosine"].mean() < errors["none"].mean()
    assert errors["none"].max() > 0  # the oracle does see chip borders: the test has teeth


def test_expression_is_encoded_once_and_chips_are_batched(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(150, 201))
    result, oracle = run(tmp_path, scene, ["red", "green"], chip=64, overlap=16, batch_size=3)
    assert sorted(oracle.encode_calls) == [("green", False), ("red", False)]
    assert all(b[0] <= 3 for b in oracle.batches)
    assert oracle.chips_seen == 2 * result.chips["total"] == 2 * 12


def test_several_expressions_give_one_band_and_one_attribute_value_each(tmp_path):
    rgb = random_rgb(90, 120, seed=5)
    scene = write_tif(tmp_path / "s.tif", rgb)
    exprs = ["the red thing", "the green thing", "the blue thing"]
    result, _ = run(tmp_path, scene, exprs, outputs=("m.tif", "p.gpkg"), chip=64, overlap=16)
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.count == 3 and list(ds.descriptions) == exprs
        masks = ds.read()
    frame = gpd.read_file(tmp_path / "p.gpkg")
    for band, text in enumerate(exprs):
        assert np.array_equal(masks[band], (rgb[band] >= 128).astype(np.uint8))
        fg = masks[band].astype(np.uint8)
        n = sum(1 for _ in rasterio.features.shapes(fg, mask=fg == 1, connectivity=4))
        assert (frame["expression"] == text).sum() == n == result.per_expression[band]["polygons"]


def test_polygons_equal_whole_scene_vectorisation_of_the_mask(tmp_path):
    rgb = random_rgb(300, 140, seed=9)
    t = Affine(0.3, 0, 600000, 0, -0.3, 5000000)
    scene = write_tif(tmp_path / "s.tif", rgb, transform=t)
    run(tmp_path, scene, outputs=("m.tif", "p.gpkg"), chip=64, overlap=16)
    mask = read(tmp_path / "m.tif", 1)
    shapes = rasterio.features.shapes(mask, mask=mask == 1, connectivity=4, transform=t)
    expected = [shapely.geometry.shape(g) for g, _ in shapes]
    got = list(gpd.read_file(tmp_path / "p.gpkg").geometry)
    assert len(got) == len(expected) > 20

    def key(g):
        return (round(g.centroid.x, 6), round(g.centroid.y, 6))

    for a, b in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
        assert a.equals_exact(b, tolerance=1e-6) or a.normalize().equals_exact(b.normalize(), 1e-6)


def test_nodata_is_nodata_everywhere_and_never_foreground(tmp_path):
    rgb = random_rgb(120, 160, seed=1)
    rgb[:, :, :70] = 250  # nodata pixels the oracle would call foreground (red 250 -> p 0.98)
    rgb[:, 100:110, 120:130] = 250
    scene = write_tif(tmp_path / "s.tif", rgb, nodata=250)
    result, oracle = run(tmp_path, scene, outputs=("m.tif", "v.gpkg"), probabilities="p.tif",
                         chip=32, overlap=8)  # fmt: skip
    nodata = (rgb == 250).all(axis=0)
    mask = read(tmp_path / "m.tif", 1)
    assert np.array_equal(mask == 255, nodata)
    assert np.array_equal(mask[~nodata], (rgb[0][~nodata] >= 128).astype(np.uint8))
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert np.array_equal(ds.read_masks(1) == 0, nodata)
    polygons = shapely.union_all(gpd.read_file(tmp_path / "v.gpkg").geometry.values)
    with rasterio.open(scene) as ds:
        holes = [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(
            nodata.astype(np.uint8), mask=nodata, transform=ds.transform)]  # fmt: skip
    assert shapely.intersection(polygons, shapely.union_all(holes)).area == 0
    assert result.chips["skipped_nodata"] >= 4  # chips wholly left of column 70 never ran
    assert oracle.chips_seen == result.chips["predicted"]


def test_all_nodata_scene_runs_no_chip_and_writes_empty_outputs(tmp_path):
    scene = write_tif(tmp_path / "s.tif", np.zeros((3, 100, 90), np.uint16), nodata=0)
    result, oracle = run(tmp_path, scene, outputs=("m.tif", "v.geojson"), chip=32, overlap=8)
    assert oracle.batches == [] and result.chips["skipped_nodata"] == result.chips["total"]
    assert (read(tmp_path / "m.tif") == 255).all()
    assert len(gpd.read_file(tmp_path / "v.geojson")) == 0


def test_uint16_four_band_scene_is_stretched_scene_wide(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 3000, (4, 100, 140)).astype(np.uint16)
    data[:, :, 70:] += 9000  # a bright half that per-tile stretching would flatten
    scene = write_tif(tmp_path / "s.tif", data, photometric="MINISBLACK")
    run(tmp_path, scene, probabilities="p.tif", chip=32, overlap=8, bands=(3, 2, 1))
    red = data[2].astype(float)
    lo, hi = np.percentile(red, [2, 98])
    expected = np.clip(np.rint((red - lo) * (255 / (hi - lo))), 0, 255)
    got = read(tmp_path / "p.tif", 1).astype(float)
    assert np.abs(got - expected).max() <= 1  # float32 vs float64 rounding at most
    assert got[:, :70].mean() < 60 and got[:, 70:].mean() > 190


def test_float32_with_nan_nodata(tmp_path):
    data = np.random.default_rng(4).random((3, 50, 70)).astype(np.float32)
    data[:, 10:20, 10:30] = np.nan
    scene = write_tif(tmp_path / "s.tif", data, nodata=float("nan"))
    run(tmp_path, scene, chip=32, overlap=8)
    mask = read(tmp_path / "out.tif", 1)
    nan = np.isnan(data).any(axis=0)
    assert np.array_equal(mask == 255, nan)
    assert set(np.unique(mask[~nan])) == {0, 1}


ROTATED = Affine.translation(300000, 4000000) @ Affine.rotation(20) @ Affine.scale(2, -2)
GEO = [
    ("EPSG:32633", Affine(0.5, 0, 500000, 0, -0.5, 4100000)),
    ("EPSG:4326", Affine(1e-5, 0, 10.0, 0, -1e-5, 45.0)),
    ("EPSG:3857", Affine(0.6, 0, 1.4e6, 0, -0.6, 4.5e6)),
    ("EPSG:32633", ROTATED),
    ("EPSG:32633", Affine(0.5, 0, 500000, 0, 0.5, 4000000)),  # south-up
]


@pytest.mark.parametrize(("crs", "transform"), GEO)
def test_outputs_keep_crs_and_transform_exactly(tmp_path, crs, transform):
    rgb = np.zeros((3, 70, 90), np.uint8)
    rgb[0, 10:20, 30:45] = 255
    scene = write_tif(tmp_path / "s.tif", rgb, crs=crs, transform=transform)
    run(tmp_path, scene, outputs=("m.tif", "v.gpkg"), probabilities="p.tif", chip=32, overlap=8)
    with rasterio.open(scene) as src:
        for name in ("m.tif", "p.tif"):
            with rasterio.open(tmp_path / name) as out:
                assert out.crs == src.crs and out.transform == src.transform
                assert (out.width, out.height) == (src.width, src.height)
    frame = gpd.read_file(tmp_path / "v.gpkg")
    assert frame.crs == rasterio.crs.CRS.from_user_input(crs)
    (poly,) = frame.geometry
    corners = [transform @ xy for xy in ((30, 10), (45, 10), (45, 20), (30, 20))]
    assert poly.equals_exact(shapely.Polygon(corners).normalize(), 1e-7) or poly.normalize(
    ).equals_exact(shapely.Polygon(corners).normalize(), 1e-7)  # fmt: skip


def test_min_area_is_square_metres_in_a_geographic_crs(tmp_path):
    rgb = np.zeros((3, 60, 60), np.uint8)
    rgb[0, 5:15, 5:15] = 255  # 100 px
    rgb[0, 30:50, 30:50] = 255  # 400 px
    d = 1e-5  # ~0.79 m x 1.11 m at 45°N: a pixel is ~0.875 m²
    scene = write_tif(
        tmp_path / "s.tif", rgb, crs="EPSG:4326", transform=Affine(d, 0, 10, 0, -d, 45)
    )
    px = ellipsoid_cell_area(45 - d, 45, d)
    run(tmp_path, scene, outputs=("v.gpkg",), chip=32, overlap=8, min_area=200 * px)
    frame = gpd.read_file(tmp_path / "v.gpkg")
    assert list(frame["pixels"]) == [400]
    assert frame["area_m2"].iloc[0] == pytest.approx(400 * px, rel=1e-3)


def test_scene_scope_means_left_of_the_scene_and_chip_scope_left_of_each_chip(tmp_path):
    rgb = np.zeros((3, 64, 256), np.uint8)
    rgb[0, 24:40, 8:24] = 255  # the same red square on the left of the scene (chip 0) ...
    rgb[0, 24:40, 200:216] = 255  # ... and on the right of the scene (left half of chip 3)
    scene = write_tif(tmp_path / "s.tif", rgb)
    text = "the red square on the left"
    run(tmp_path, scene, text, outputs=("chip.tif",), chip=64, overlap=0)
    scene_scope, oracle = run(tmp_path, scene, text, outputs=("scene.tif", "scene.gpkg"),
                              chip=64, overlap=0, scope="scene")  # fmt: skip
    by_chip, by_scene = read(tmp_path / "chip.tif", 1), read(tmp_path / "scene.tif", 1)
    assert by_chip[:, :128].sum() == 256 and by_chip[:, 128:].sum() == 256  # both squares
    assert by_scene[:, :128].sum() == 256 and by_scene[:, 128:].sum() == 0  # only the left one
    assert oracle.encode_calls == [(text, False), (text, True)]  # coarse, then object words
    assert scene_scope.chips["skipped_outside"] == 3  # the fine pass ran on chip 0 only
    assert len(gpd.read_file(tmp_path / "scene.gpkg")) == 1
    assert scene_scope.options["effective_scope"] == "scene"


def test_scene_scope_on_a_scene_that_fits_one_chip_is_chip_scope(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(40, 50))
    result, oracle = run(tmp_path, scene, "red on the left", chip=64, scope="scene")
    assert oracle.encode_calls == [("red on the left", False)]
    assert result.options["effective_scope"] == "chip"


def test_open_removes_specks_like_a_whole_scene_opening(tmp_path):
    rgb = random_rgb(120, 100, seed=8)
    scene = write_tif(tmp_path / "s.tif", rgb)
    run(tmp_path, scene, outputs=("raw.tif",), chip=32, overlap=8)
    run(tmp_path, scene, outputs=("open.tif", "open.gpkg"), chip=32, overlap=8, open_px=1)
    raw, opened = read(tmp_path / "raw.tif", 1), read(tmp_path / "open.tif", 1)
    expected = ndimage.binary_opening(raw == 1, np.ones((3, 3), bool)).astype(np.uint8)
    assert np.array_equal(opened, expected) and expected.sum() < (raw == 1).sum()
    frame = gpd.read_file(tmp_path / "open.gpkg")
    assert frame["pixels"].sum() == expected.sum()


def test_cog_and_overviews(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(600, 700), tiled=True)
    run(tmp_path, scene, outputs=("plain.tif",), chip=256, overlap=32)
    run(tmp_path, scene, outputs=("cog.tif",), probabilities="cogp.tif", chip=256, overlap=32,
        cog=True)  # fmt: skip
    with rasterio.open(tmp_path / "plain.tif") as ds:
        assert ds.overviews(1) == [2] and ds.block_shapes[0] == (512, 512)
        assert ds.profile["compress"] == "zstd" and ds.nodata == 255  # see raster.COMPRESS
    for name in ("cog.tif", "cogp.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.overviews(1)
    assert np.array_equal(read(tmp_path / "cog.tif"), read(tmp_path / "plain.tif"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_interrupt_or_error_leaves_no_output_and_keeps_the_old_file(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(150, 150))
    (tmp_path / "m.tif").write_bytes(b"previous result")
    before = sorted(p.name for p in tmp_path.iterdir())
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc):
            oracle = Oracle(fail_after=2, fail_with=exc)
            run(tmp_path, scene, outputs=("m.tif", "v.gpkg", "v.shp"), probabilities="p.tif",
                oracle=oracle, chip=32, overlap=8, overwrite=True)  # fmt: skip
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "m.tif").read_bytes() == b"previous result"


def test_a_model_returning_the_wrong_shape_is_a_clear_error(tmp_path):
    class Quarter(Oracle):
        def predict(self, chips, encoded):
            return super().predict(chips, encoded)[:, ::4, ::4]

    scene = write_tif(tmp_path / "s.tif", random_rgb(80, 80))
    with pytest.raises(FiacliError, match="expected one probability map per chip"):
        run(tmp_path, scene, outputs=("m.tif",), oracle=Quarter(), chip=32, overlap=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_existing_outputs_and_manifests_need_overwrite(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(40, 40))
    (tmp_path / "v.gpkg").write_bytes(b"x")
    (tmp_path / "m.manifest.json").write_text("{}")
    oracle = Oracle()
    with pytest.raises(FiacliError, match="v.gpkg already exists.*overwrite"):
        run(tmp_path, scene, outputs=("v.gpkg",), oracle=oracle)
    with pytest.raises(FiacliError, match="m.manifest.json already exists"):
        run(tmp_path, scene, outputs=("m.tif",), oracle=oracle)
    assert oracle.batches == [] and not (tmp_path / "m.tif").exists()
    run(tmp_path, scene, outputs=("v.gpkg",), overwrite=True)
    assert len(gpd.read_file(tmp_path / "v.gpkg")) > 0


@pytest.mark.parametrize("error", ["errno", "gdal"])
def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch, error):
    from fiacli.geo import raster

    def full(self):
        if error == "errno":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise rasterio.errors.RasterioIOError(
            "TIFFAppendToStrip:Write error: No space left on device"
        )

    monkeypatch.setattr(raster.RasterRowWriter, "_flush", full)
    scene = write_tif(tmp_path / "s.tif", random_rgb(100, 100))
    with pytest.raises(FiacliError, match="disk full"):
        run(tmp_path, scene, outputs=("m.tif", "v.gpkg"), chip=32, overlap=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_disk_full_in_the_polygon_spool_is_one_clear_error(tmp_path, monkeypatch):
    """The spool's writes go to /dev/full, so pyarrow fails as on a full disk (ENOSPC)."""
    import pyarrow as pa

    from fiacli.geo import vectorize

    real, spooled = pa.OSFile, []

    def full(path, mode="r"):
        if mode == "wb" and ".fiacli-polygons-" in str(path):
            spooled.append(path)
            return real("/dev/full", mode)
        return real(path, mode)

    monkeypatch.setattr(vectorize, "SPOOL_VERTICES", 1)  # spool from the first polygon on
    monkeypatch.setattr(pa, "OSFile", full)
    # tall enough for a window of 2,279 rows (1 Mpx) to be vectorised before the end
    scene = write_tif(tmp_path / "s.tif", random_rgb(2400, 460), tiled=True)
    with pytest.raises(FiacliError, match="disk full"):
        run(tmp_path, scene, outputs=("m.tif", "v.gpkg"), chip=32, overlap=8)
    assert spooled  # the failure came from the spool
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_manifest_and_summary(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(70, 80))
    result, _ = run(tmp_path, scene, ["red", "blue"], outputs=("m.tif", "m.gpkg"),
                    chip=32, overlap=8, model_info={"path": "model.safetensors"})  # fmt: skip
    manifest = json.loads((tmp_path / "m.manifest.json").read_text())
    assert manifest["fiacli_version"] and manifest["model"] == {"path": "model.safetensors"}
    assert manifest["expressions"] == ["red", "blue"]
    assert manifest["options"]["chip"] == 32 and manifest["options"]["blend"] == "cosine"
    assert manifest["outputs"]["vectors"] == [str(tmp_path / "m.gpkg")]
    summary = result.to_dict()
    json.dumps(summary)  # serialisable
    assert summary["chips"]["total"] == 9 and summary["timings_s"]["total"] > 0
    assert summary["scene"]["valid_pixels"] == 70 * 80


def test_resolution_writes_on_the_resampled_grid(tmp_path):
    rgb = np.zeros((3, 80, 100), np.uint8)
    rgb[0, :, 50:] = 255
    scene = write_tif(tmp_path / "s.tif", rgb)  # 0.5 m pixels
    run(tmp_path, scene, chip=32, overlap=8, resolution=1.0)
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert (ds.width, ds.height) == (50, 40) and ds.res == (1.0, 1.0)
        mask = ds.read(1)
    assert (mask[:, :24] == 0).all() and (mask[:, 26:] == 1).all()


def test_ungeoreferenced_scene_needs_permission_and_gets_pixel_coordinates(tmp_path):
    rgb = np.zeros((3, 40, 40), np.uint8)
    rgb[0, 5:10, 20:30] = 255
    scene = write_tif(tmp_path / "s.tif", rgb, crs=None, transform=None)
    with pytest.raises(FiacliError, match="allow-ungeoreferenced"):
        run(tmp_path, scene)
    run(tmp_path, scene, outputs=("v.geojson",), allow_ungeoreferenced=True)
    (poly,) = gpd.read_file(tmp_path / "v.geojson").geometry
    assert poly.bounds == (20, 5, 30, 10)
    with pytest.raises(UsageError, match="georeferenced"):
        run(tmp_path, scene, outputs=("w.gpkg",), allow_ungeoreferenced=True, min_area=5)


def test_dst_crs_reprojects_polygons_only(tmp_path):
    rgb = np.zeros((3, 40, 40), np.uint8)
    rgb[0, 5:10, 20:30] = 255
    scene = write_tif(tmp_path / "s.tif", rgb)
    run(tmp_path, scene, outputs=("m.tif", "v.gpkg"), dst_crs="EPSG:4326")
    frame = gpd.read_file(tmp_path / "v.gpkg")
    assert frame.crs.to_epsg() == 4326
    lon, lat = frame.geometry.iloc[0].centroid.coords[0]
    assert 14.9 < lon < 15.1 and 37.0 < lat < 37.1  # UTM 33N, x 500012 m, y 4099996 m
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs.to_epsg() == 32633


def test_usage_errors_come_before_any_work(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(40, 40))
    oracle = Oracle()
    cases = [
        ({"outputs": ("x.png",)}, "unknown output extension"),
        ({"outputs": ("a.tif", "b.tif")}, "give one .tif"),
        ({"probabilities": "p.gpkg"}, "GeoTIFF"),
        ({"blend": "max"}, "blend"),
        ({"scope": "world"}, "scope"),
        ({"threshold": 1.5}, "threshold"),
        ({"overlap": 64}, "overlap"),
        ({"outputs": ("v.gpkg",), "cog": True}, "--cog"),
        ({"dst_crs": "EPSG:0"}, "dst-crs"),
        ({"outputs": ("no/such/dir/m.tif",)}, "does not exist"),
    ]
    for kw, message in cases:
        with pytest.raises(FiacliError, match=message):
            run(tmp_path, scene, oracle=oracle, **kw)
    with pytest.raises(FiacliError, match="empty"):
        run(tmp_path, scene, ["red", "  "], oracle=oracle)
    assert oracle.batches == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_input_tiles_are_cached_between_chip_reads(tmp_path, monkeypatch):
    """GDAL's block cache is really 16 MiB during a run (an integer GDAL_CACHEMAX is bytes to
    rasterio: 16 would disable it and make every read decode its tiles again)."""
    from fiacli.geo.raster import Scene

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    seen = []
    read = Scene.read

    def spy(self, window, out=None):
        seen.append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
        return read(self, window, out)

    monkeypatch.setattr(Scene, "read", spy)
    run(tmp_path, write_tif(tmp_path / "s.tif", random_rgb(100, 100)), chip=64, overlap=16)
    assert seen and set(seen) == {16 * 2**20}


def test_memory_does_not_grow_with_scene_height(tmp_path):
    """Python-side peak (numpy buffers) of a 5x taller scene is the same: one chip row held."""
    peaks = []
    for h in (768, 4096):  # both taller than one 512-px tile row of the outputs
        scene = write_tif(tmp_path / f"s{h}.tif", random_rgb(h, 256), tiled=True)
        gc.collect()
        tracemalloc.start()
        run(tmp_path, scene, outputs=(f"m{h}.tif",), probabilities=f"p{h}.tif", chip=64,
            overlap=16)  # fmt: skip
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # holding even a uint8 mask of the tall scene would add 4096 * 256 bytes
    assert peaks[1] - peaks[0] < 4096 * 256 // 2, peaks

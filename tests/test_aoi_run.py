"""Segmenting inside areas of interest (fiacli.app.areas) with the oracle model.

The oracle (tests/_oracle.py) answers "red" with the red channel and "on the left"/"on the right"
by zeroing the other half of the picture it is shown, so where it finds something says which
picture it was shown: here, each AOI feature's own.
"""

from __future__ import annotations

import json
import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from _oracle import UTM_TRANSFORM, Oracle, random_rgb, read, write_tif
from affine import Affine
from cli_helpers import one_line

from fiacli.app import areas as areas_module
from fiacli.app.api import Segmenter
from fiacli.app.areas import AreaOptions, segment_areas
from fiacli.app.pipeline import segment_raster
from fiacli.core.errors import FiacliError, UsageError

T = UTM_TRANSFORM  # 0.5 m pixels from (500000, 4100000), EPSG:32633


def px_box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A box given in scene pixels (columns c0..c1, rows r0..r1), in map coordinates."""
    return shapely.box(T.c + c0 * T.a, T.f + r1 * T.e, T.c + c1 * T.a, T.f + r0 * T.e)


def px_polygon(*points: tuple[float, float]) -> shapely.Polygon:
    return shapely.Polygon([(T.c + c * T.a, T.f + r * T.e) for c, r in points])


def inside(geom, shape=None, transform=T) -> np.ndarray:
    """Pixels whose centre is inside ``geom``."""
    return rasterio.features.rasterize([(geom, 1)], out_shape=shape, transform=transform,
                                       dtype="uint8").astype(bool)  # fmt: skip


def aois(*geoms, **columns) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=list(geoms), crs="EPSG:32633")


@pytest.fixture
def two_squares(tmp_path):
    """Red squares: one in the left of AOI A, one in the right of AOI B."""
    rgb = np.zeros((3, 200, 400), np.uint8)
    rgb[0, 90:110, 40:60] = 255  # A spans columns 20..140: this is its left
    rgb[0, 90:110, 300:320] = 255  # B spans columns 220..340: this is its right
    scene = write_tif(tmp_path / "scene.tif", rgb)
    return scene, aois(px_box(20, 40, 140, 160), px_box(220, 40, 340, 160), name=["A", "B"])


def test_the_answer_is_relative_to_each_aoi(two_squares, tmp_path):
    scene, features = two_squares
    for side, found_in, empty_in in (("left", (40, 60), (300, 320)),
                                     ("right", (300, 320), (40, 60))):  # fmt: skip
        out = tmp_path / f"{side}.tif"
        result = segment_areas(scene, f"the red square on the {side}", [out], aoi=features,
                               predictor=Oracle())  # fmt: skip
        mask = read(out, 1)
        assert mask[95:105, found_in[0] + 5 : found_in[1] - 5].all(), side
        assert not (mask[:, empty_in[0] : empty_in[1]] == 1).any(), side
        found = [r["per_expression"][0]["foreground_pixels"] for r in result.areas]
        assert (found[0] > 0) == (side == "left") and (found[1] > 0) == (side == "right")
    # the whole scene in chip scope answers each chip instead: with 128-px chips at columns
    # 0, 128, 256, both squares are "on the left"
    segment_raster(scene, "the red square on the left", tmp_path / "w.tif",
                   predictor=Oracle(image_size=128), overlap=0)  # fmt: skip
    whole = read(tmp_path / "w.tif", 1)
    assert whole[95:105, 45:55].all() and whole[95:105, 305:315].all()


def test_a_feature_that_fits_is_one_picture_resized_like_training(tmp_path):
    from fiacli.training.transforms import resize_image

    rgb = random_rgb(200, 300, seed=3)
    scene = write_tif(tmp_path / "scene.tif", rgb)

    class Seeing(Oracle):
        def predict(self, chips, encoded):
            self.seen = chips.copy()
            return super().predict(chips, encoded)

    model = Seeing()  # a 64-px chip: features up to 128 px fit the view
    result = segment_areas(scene, "red", [tmp_path / "o.tif"], aoi=[px_box(10, 20, 130, 100)],
                           predictor=model)  # fmt: skip
    (record,) = result.areas
    assert record["picture"]["mode"] == "one picture"
    assert record["picture"]["scale"] == pytest.approx(64 / 120, abs=1e-6)
    assert record["chips"]["total"] == 1 and model.seen.shape == (1, 3, 64, 64)
    import torch

    # 120 x 80 -> 64 x 43, centred: rows 10..53 of the picture; nodata (the fill) around it
    expected = resize_image(torch.from_numpy(rgb[:, 20:100, 10:130].copy()), (43, 64)).numpy()
    diff = np.abs(model.seen[0, :, 10:53].astype(int) - expected)
    # inside: the same filter; on the window's edge GDAL also weighs the scene's pixels just
    # outside it, where torch repeats the edge
    assert diff[:, 1:-1, 1:-1].max() <= 2 and diff[:, 1:-1, 1:-1].mean() < 0.1
    assert diff.max() <= 10
    assert (model.seen[0, :, :10] == np.array([124, 116, 104])[:, None, None]).all()


def test_masks_and_polygons_never_leak_outside_the_polygons(tmp_path):
    rgb = np.zeros((3, 300, 300), np.uint8)
    rgb[0] = 255  # red everywhere: only the AOIs limit what is found
    scene = write_tif(tmp_path / "scene.tif", rgb)
    triangle = px_polygon((10, 10), (100, 10), (10, 90))  # fits the view
    ell = px_polygon((10, 100), (290, 100), (290, 130), (40, 130), (40, 290), (10, 290))
    out = [tmp_path / "o.tif", tmp_path / "o.gpkg"]
    result = segment_areas(scene, "the red", out, aoi=aois(triangle, ell), predictor=Oracle(),
                           probabilities=tmp_path / "p.tif")  # fmt: skip
    mask = read(out[0], 1)
    allowed = inside(shapely.union(triangle, ell), mask.shape)
    assert (mask == 1).any()
    assert not ((mask == 1) & ~allowed).any()
    assert (mask[~allowed] == 255).all()  # outside every AOI: nodata
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert not ((ds.read_masks(1) > 0) & ~allowed).any()
    polygons = gpd.read_file(out[1])
    for aoi_id, geom in zip(polygons["aoi_id"], polygons.geometry, strict=True):
        feature = (triangle, ell)[aoi_id]
        assert geom.difference(feature).area < 1e-6
    assert set(polygons["aoi_id"]) == {0, 1}
    big = result.areas[1]
    assert big["picture"]["mode"] == "scene of its own"
    # the L covers a third of its window: chips far from it were never read nor run
    assert big["picture"]["skipped_far_from_polygon"] and big["chips"]["skipped_nodata"] > 0


def test_skipping_chips_far_from_the_polygon_changes_nothing(tmp_path, monkeypatch):
    scene = write_tif(tmp_path / "scene.tif", random_rgb(400, 400, seed=5))
    diagonal = px_polygon((0, 0), (60, 0), (400, 340), (400, 400), (340, 400), (0, 60))
    first = segment_areas(scene, "red", [tmp_path / "a.tif"], aoi=[diagonal],
                          predictor=Oracle(radius=2))  # fmt: skip
    monkeypatch.setattr(areas_module, "MASK_BELOW", 0.0)  # never skip
    second = segment_areas(scene, "red", [tmp_path / "b.tif"], aoi=[diagonal],
                           predictor=Oracle(radius=2))  # fmt: skip
    assert first.chips["predicted"] < second.chips["predicted"]
    assert np.array_equal(read(tmp_path / "a.tif"), read(tmp_path / "b.tif"))


def test_an_aoi_crossing_the_scene_edge_is_cut_to_the_scene(tmp_path):
    rgb = np.zeros((3, 100, 300), np.uint8)
    rgb[0, :, 250:] = 255
    scene = write_tif(tmp_path / "scene.tif", rgb)
    crossing = px_box(240, -50, 350, 60)
    result = segment_areas(scene, "red", [tmp_path / "o.tif", tmp_path / "o.gpkg"],
                           aoi=[crossing], predictor=Oracle(), crop=True)  # fmt: skip
    assert result.areas[0]["window"] == [240, 0, 60, 60]
    mask = read(tmp_path / "o.tif", 1)
    assert mask.shape == (60, 60) and mask[:, 10:].min() == 1 and (mask[:, :10] == 0).all()
    footprint = px_box(0, 0, 300, 100)
    polygons = gpd.read_file(tmp_path / "o.gpkg").geometry
    assert len(polygons) and all(g.difference(footprint).area < 1e-6 for g in polygons)


def test_a_reprojected_aoi_matches_the_same_aoi_in_the_scene_crs(tmp_path):
    scene = write_tif(tmp_path / "scene.tif", random_rgb(300, 300, seed=1))
    # edges a quarter pixel off the grid, so that no pixel centre sits on an edge
    features = aois(px_polygon((10.25, 12.25), (110.25, 30.25), (60.25, 120.25)),
                    px_box(130.25, 20.25, 290.25, 280.25), name=["small", "large"])  # fmt: skip
    utm, lonlat = tmp_path / "aoi-utm.gpkg", tmp_path / "aoi-lonlat.geojson"
    features.to_file(utm)
    features.to_crs("EPSG:4326").to_file(lonlat)
    runs = {}
    for name, path in (("utm", utm), ("lonlat", lonlat)):
        out = [tmp_path / f"{name}.tif", tmp_path / f"{name}.gpkg"]
        runs[name] = segment_areas(scene, "red", out, aoi=path, keep_fields="name",
                                        predictor=Oracle(radius=1))  # fmt: skip
    assert np.array_equal(read(tmp_path / "utm.tif"), read(tmp_path / "lonlat.tif"))
    assert [r["window"] for r in runs["utm"].areas] == [r["window"] for r in runs["lonlat"].areas]
    a, b = gpd.read_file(tmp_path / "utm.gpkg"), gpd.read_file(tmp_path / "lonlat.gpkg")
    assert len(a) == len(b) > 0
    assert list(a["name"]) == list(b["name"])
    assert list(a["aoi_id"]) == [i + 1 for i in b["aoi_id"]]  # FIDs: GeoPackage's start at 1
    diff = shapely.union_all(a.geometry).symmetric_difference(shapely.union_all(b.geometry))
    assert diff.area < 1e-3 * a.area.sum()


def test_outputs_carry_the_feature_and_the_manifest_lists_each(two_squares, tmp_path):
    scene, features = two_squares
    features["owner"] = ["ann", "bob"]
    out = [tmp_path / "o.tif", tmp_path / "o.gpkg", tmp_path / "o.parquet"]
    result = segment_areas(scene, ["the red square", "green"], out, aoi=features,
                           keep_fields=["name", "owner"], predictor=Oracle(),
                           probabilities=tmp_path / "p.tif", preview=tmp_path / "o.png",
                           dst_crs="EPSG:4326")  # fmt: skip
    polygons = gpd.read_file(tmp_path / "o.gpkg")
    assert list(polygons.columns[:5]) == ["aoi_id", "expression", "area_m2", "pixels", "mean_prob"]
    assert polygons.crs.to_epsg() == 4326
    assert sorted(zip(polygons["aoi_id"], polygons["name"], polygons["owner"], strict=True)) == [
        (0, "A", "ann"), (1, "B", "bob")]  # fmt: skip
    assert polygons["area_m2"].iloc[0] == pytest.approx(100, rel=0.25)  # 20 x 20 px of 0.25 m²
    assert len(gpd.read_parquet(tmp_path / "o.parquet")) == 2
    with rasterio.open(tmp_path / "o.tif") as ds:  # the scene's grid, nodata outside the AOIs
        assert (ds.width, ds.height, ds.count, ds.transform) == (400, 200, 2, T)
        assert ds.descriptions == ("the red square", "green") and ds.nodata == 255
        mask = ds.read()
    assert (mask[:, :, 140:220] == 255).all() and (mask[0, 95:105, 45:55] == 1).all()
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert [f["id"] for f in manifest["areas"]] == [0, 1]
    first = manifest["areas"][0]
    assert first["fields"] == {"name": "A", "owner": "ann"}
    assert first["picture"]["scale"] == pytest.approx(64 / 120, abs=1e-5)
    assert first["chips"]["total"] == 1 and first["seconds"] > 0
    assert manifest["options"]["aoi"] == "<GeoDataFrame>" and manifest["chips"]["total"] == 2
    assert result.per_expression[0]["polygons"] == 2
    assert (tmp_path / "o.png").stat().st_size > 0


def test_crop_writes_only_the_bounding_window(two_squares, tmp_path):
    scene, features = two_squares
    segment_areas(scene, "red", [tmp_path / "o.tif"], aoi=features, crop=True, cog=True,
                  predictor=Oracle())  # fmt: skip
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert (ds.width, ds.height) == (320, 120)
        assert ds.transform == T @ rasterio.Affine.translation(20, 40)
        assert ds.read(1)[55:65, 25:35].min() == 1


def test_each_feature_brings_its_expression_and_every_e_applies_to_all(tmp_path):
    rgb = np.zeros((3, 100, 300), np.uint8)
    rgb[0, 40:60, 40:60] = 255  # red in A
    rgb[1, 40:60, 200:220] = 255  # green in B
    rgb[2, 40:60, 230:240] = 255  # blue in B
    scene = write_tif(tmp_path / "scene.tif", rgb)
    features = aois(px_box(10, 10, 90, 90), px_box(170, 10, 250, 90),
                    query=["the red one", "the green one"])  # fmt: skip
    result = segment_areas(scene, ["the blue one"], [tmp_path / "o.tif", tmp_path / "o.gpkg"],
                           aoi=features, expression_field="query", predictor=Oracle())  # fmt: skip
    assert result.expressions == ["expression from field 'query'", "the blue one"]
    own = [r["expressions"] for r in result.areas]
    assert own == [["the red one", "the blue one"], ["the green one", "the blue one"]]
    mask = read(tmp_path / "o.tif")
    assert mask[0, 45:55, 45:55].min() == 1 and mask[0, 45:55, 205:215].min() == 1
    assert (mask[1, :, :100] != 1).all() and mask[1, 45:55, 232:238].min() == 1
    polygons = gpd.read_file(tmp_path / "o.gpkg")
    assert sorted(zip(polygons["aoi_id"], polygons["expression"], strict=True)) == [
        (0, "the red one"), (1, "the blue one"), (1, "the green one")]  # fmt: skip


def test_overlapping_aois_the_object_is_there_if_either_says_so(tmp_path):
    rgb = np.zeros((3, 100, 300), np.uint8)
    rgb[0, 40:60, 100:120] = 255
    scene = write_tif(tmp_path / "scene.tif", rgb)
    features = aois(px_box(80, 10, 200, 90), px_box(10, 10, 130, 90))  # left of the 1st only
    segment_areas(scene, "the red on the left", [tmp_path / "o.tif", tmp_path / "o.gpkg"],
                  aoi=features, predictor=Oracle())  # fmt: skip
    assert read(tmp_path / "o.tif", 1)[45:55, 105:115].min() == 1
    assert list(gpd.read_file(tmp_path / "o.gpkg")["aoi_id"]) == [0]


def test_large_feature_scopes_chips_or_a_coarse_pass_over_the_feature(tmp_path):
    rgb = np.zeros((3, 200, 600), np.uint8)
    rgb[0] = 255
    scene = write_tif(tmp_path / "scene.tif", rgb)
    feature = [px_box(280, 20, 580, 180)]  # 300 px > 2 chips of 64: a scene of its own
    cols = {}
    for scope in ("chip", "scene"):
        out = tmp_path / f"out-{scope}.tif"
        result = segment_areas(scene, "the red on the left", [out], aoi=feature, scope=scope,
                               predictor=Oracle())  # fmt: skip
        assert result.areas[0]["picture"]["mode"] == "scene of its own"
        assert result.areas[0]["effective_scope"] == scope
        cols[scope] = np.nonzero((read(out, 1) == 1).any(axis=0))[0]
    assert cols["chip"].max() > 540  # every chip's own left half, across the feature
    # scene scope: the left of the feature (a coarse pass over it, not over the scene, whose
    # left half the feature hardly touches), plus the coarse pass's small margin
    assert cols["scene"].min() == 280 and 400 < cols["scene"].max() < 460


def test_an_interrupt_leaves_nothing(two_squares, tmp_path):
    scene, features = two_squares
    before = set(tmp_path.iterdir())
    with pytest.raises(KeyboardInterrupt):
        segment_areas(scene, "red", [tmp_path / "o.tif", tmp_path / "o.gpkg"], aoi=features,
                      predictor=Oracle(fail_after=1), probabilities=tmp_path / "p.tif")  # fmt: skip
    assert set(tmp_path.iterdir()) == before


def test_the_api_takes_shapely_geometries_a_frame_or_a_file(two_squares, tmp_path):
    scene, features = two_squares
    path = tmp_path / "aoi.gpkg"
    features.to_file(path)
    model = Segmenter(Oracle())
    masks = []
    for k, aoi in enumerate((list(features.geometry), features, path, features.geometry)):
        result = model.segment(scene, "the red on the left", tmp_path / f"o{k}.tif", aoi=aoi)
        assert len(result.areas) == 2
        masks.append(read(tmp_path / f"o{k}.tif"))
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    box = model.segment(scene, "red", tmp_path / "b.tif", bbox=features.total_bounds)
    assert box.areas[0]["id"] == "bbox"
    plain = model.segment(scene, "red", tmp_path / "plain.tif")  # no AOI: the whole scene
    assert not hasattr(plain, "areas")
    with pytest.raises(UsageError, match="unknown segment option 'aoi'"):
        segment_raster(scene, "red", tmp_path / "x.tif", predictor=Oracle(), aoi=path)


def test_preflight_errors_before_any_work(two_squares, tmp_path):
    scene, features = two_squares
    with pytest.raises(
        FiacliError,
        match=r"given geometries \(1 feature\) does not overlap .*"
        r"the scene covers 500000,4099900,500200,4100000 in EPSG:32633",
    ):
        segment_areas(scene, "red", tmp_path / "o.tif", aoi=[px_box(900, 900, 950, 950)],
                      predictor=Oracle())  # fmt: skip
    with pytest.raises(UsageError, match="no expression given"):
        segment_areas(scene, [], tmp_path / "o.tif", aoi=features, predictor=Oracle())
    path = tmp_path / "aoi.gpkg"
    features.to_file(path)
    with pytest.raises(UsageError, match="is the input"):
        segment_areas(scene, "red", path, aoi=path, predictor=Oracle(), overwrite=True)
    assert AreaOptions.build(aoi=path).record()["aoi"] == str(path)
    assert not list(tmp_path.glob("o*"))


def test_options_that_do_not_fit_together_are_usage_errors():
    for changes, message in [
        ({"aoi": "a.gpkg", "bbox": "0,0,1,1"}, "not both"),
        ({"aoi_where": "a = 1"}, "--aoi-where needs --aoi"),
        ({"expression_field": "q"}, "--expression-field needs --aoi"),
        ({"bbox_crs": "EPSG:4326"}, "--bbox-crs needs --bbox"),
        ({"crop": True}, "--crop needs"),
        ({"bbox": "0,0,1,1", "bbox_crs": "EPSG:nope"}, "unknown CRS"),
        ({"aoi": "a.gpkg", "keep_fields": "name,area_m2"}, "'area_m2'"),
        ({"aoi": "a.gpkg", "keep_fields": "FID"}, "'FID'"),  # a GeoPackage's own column
        ({"aoi": "a.gpkg", "keep_fields": "Pixels"}, "'Pixels'"),  # its names ignore case
        ({"aoi": "a.gpkg", "aoi_layr": "x"}, "unknown area option 'aoi_layr'"),
    ]:
        with pytest.raises(UsageError, match=message):
            AreaOptions.build(**changes)
    assert AreaOptions.build(bbox=[0, 0, 1, 1], crop=True).active


# --- the command line -------------------------------------------------------------------------


def test_cli_bbox_and_aoi_dispatch_to_areas(run_cli, oracle, two_squares, tmp_path):
    scene, features = two_squares
    path = tmp_path / "aoi.gpkg"
    features.to_file(path)
    x0, y0, x1, y1 = features.total_bounds
    r = run_cli("segment", str(scene), "the red on the left", "-m", "m.safetensors",
                "--bbox", f"{x0},{y0},{x1},{y1}", "-o", str(tmp_path / "b.gpkg"))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "AOI bbox:" in r.stdout and oracle.loaded
    r = run_cli("segment", str(scene), "the red on the left", "-m", "m.safetensors",
                "--aoi", str(path), "--aoi-where", "name = 'B'", "--keep-fields", "name",
                "-o", str(tmp_path / "a.gpkg"), "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [a["id"] for a in summary["areas"]] == [2]  # GeoPackage FID of B
    assert summary["options"]["aoi_where"] == "name = 'B'"
    assert summary["per_expression"][0]["foreground_pixels"] == 0  # B's square is on its right


def test_cli_aoi_over_tiles_with_mosaic_equals_the_aoi_over_the_whole_scene(run_cli, oracle,
                                                                           tmp_path):  # fmt: skip
    """Parcels across tile seams: --mosaic makes the tiles one scene, then each AOI is read
    from it as from the scene the tiles were cut from."""
    rgb = np.zeros((3, 200, 400), np.uint8)
    rgb[0, 90:110, 185:215] = 255  # across the seam at column 200
    rgb[0, 30:50, 300:320] = 255
    scene = write_tif(tmp_path / "scene.tif", rgb)
    (tmp_path / "tiles").mkdir()
    for j, (c0, c1) in enumerate([(0, 200), (200, 400)]):
        write_tif(tmp_path / "tiles" / f"t{j}.tif", np.ascontiguousarray(rgb[:, :, c0:c1]),
                  transform=T @ Affine.translation(c0, 0))  # fmt: skip
    path = tmp_path / "parcels.gpkg"
    aois(px_box(150, 60, 250, 140), px_box(280, 10, 340, 70)).to_file(path)
    whole, tiled = tmp_path / "whole.tif", tmp_path / "out" / "tiled.tif"
    r = run_cli("segment", str(scene), "red", "--aoi", str(path), "-o", str(whole))
    assert r.exit_code == 0, r.stderr
    r = run_cli("segment", str(tmp_path / "tiles" / "*.tif"), "red", "--mosaic", "--aoi", str(path),
                "-o", str(tiled), "--probabilities", str(tmp_path / "out" / "{stem}-p.tif"),
                "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["scene"]["path"] == str(tmp_path / "out" / "tiled.vrt")
    assert (tmp_path / "out" / "mosaic-p.tif").exists()  # the template names the mosaic
    assert np.array_equal(read(tiled, 1), read(whole, 1))
    assert read(tiled, 1)[100, 185:215].all()  # the object across the seam, whole
    with rasterio.open(tiled) as a, rasterio.open(whole) as b:
        assert a.transform == b.transform and a.crs == b.crs


def test_cli_bad_bbox_is_a_usage_error(run_cli, oracle, two_squares, tmp_path):
    scene, _ = two_squares
    r = run_cli("segment", str(scene), "red", "--bbox", "500100,4099900,500000,4099990",
                "-o", str(tmp_path / "o.gpkg"))  # fmt: skip
    assert r.exit_code == 2
    assert "MINX must be below MAXX" in one_line(r) and not oracle.loaded
    r = run_cli("segment", str(scene), "red", "--crop", "-o", str(tmp_path / "o.gpkg"))
    assert r.exit_code == 2 and "--crop needs" in one_line(r)


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("garbage", [], "cannot read AOI file .*aoi.gpkg"),
        ("nocrs", [], "AOI file .*aoi.shp has no CRS"),
        ("parcels", ["--aoi-where", "name = 'Z'"], "--aoi-where \"name = 'Z'\" selects no"),
        ("parcels", ["--expression-field", "nope"], "--expression-field 'nope'"),
        ("parcels", ["--expression-field", "query"], "AOI feature 2 has an empty"),
        ("parcels", ["--keep-fields", "owner"], "--keep-fields 'owner'"),
    ],
)
def test_cli_bad_aoi_input_is_one_line_before_the_model(run_cli, oracle, two_squares, tmp_path,
                                                        setup, extra, message):  # fmt: skip
    scene, features = two_squares
    if setup == "garbage":
        path = tmp_path / "aoi.gpkg"
        path.write_text("garbage")
    elif setup == "nocrs":
        path = tmp_path / "aoi.shp"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            features.set_crs(None, allow_override=True).to_file(path)
    else:
        path = tmp_path / "aoi.gpkg"
        features["query"] = ["the red one", ""]
        features.to_file(path)
    r = run_cli("segment", str(scene), "red", "--aoi", str(path), *extra,
                "-o", str(tmp_path / "o.gpkg"))  # fmt: skip
    assert r.exit_code == 1
    line = one_line(r)
    import re

    assert re.search(message, line), line
    assert not oracle.loaded  # all before the model is loaded
    assert not list(tmp_path.glob("o*"))


def test_cli_warns_about_features_outside_and_repaired_ones(run_cli, oracle, two_squares,
                                                            tmp_path):  # fmt: skip
    scene, features = two_squares
    bowtie = px_polygon((20, 40), (140, 160), (140, 40), (20, 160))
    many = aois(features.geometry[0], px_box(900, 900, 950, 950), bowtie, features.geometry[1])
    path = tmp_path / "aoi.geojson"
    many.to_file(path)
    r = run_cli("segment", str(scene), "red", "--aoi", str(path), "-o", str(tmp_path / "o.gpkg"),
                "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "AOI feature 1 lies outside the scene; skipped" in err
    assert "1 invalid AOI geometry repaired with make_valid" in err
    assert [a["id"] for a in json.loads(r.stdout)["areas"]] == [0, 2, 3]


def test_nothing_found_still_writes_every_output_with_its_columns(two_squares, tmp_path):
    scene, features = two_squares
    out = [tmp_path / "o.gpkg", tmp_path / "o.parquet", tmp_path / "o.shp", tmp_path / "o.tif"]
    result = segment_areas(scene, "the blue thing", out, aoi=features, keep_fields="name",
                           predictor=Oracle(), preview=tmp_path / "o.png")  # fmt: skip
    assert result.per_expression == [
        {"expression": "the blue thing", "foreground_pixels": 0, "polygons": 0}]  # fmt: skip
    for path in out[:3]:
        frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
        assert len(frame) == 0 and {"aoi_id", "expression", "name"} <= set(frame.columns), path
        assert frame.crs.to_epsg() == 32633
    mask = read(out[3], 1)
    assert set(np.unique(mask)) == {0, 255}


def test_many_expressions_preview_one_colour_per_band(tmp_path):
    from PIL import Image

    scene = write_tif(tmp_path / "scene.tif", random_rgb(100, 700, seed=2))
    texts = ["red one", "red two", "red three", "red four", "red five", "red six"]
    features = aois(*[px_box(10 + 110 * k, 10, 100 + 110 * k, 90) for k in range(6)], q=texts)
    segment_areas(scene, [], tmp_path / "o.gpkg", aoi=features, expression_field="q",
                  predictor=Oracle(), preview=tmp_path / "o.png")  # fmt: skip
    title = Image.open(tmp_path / "o.png").text["Title"]
    assert title == "expression from field 'q' | areas of interest (6)"
    segment_areas(scene, [], tmp_path / "few.gpkg", aoi=features.iloc[:2], expression_field="q",
                  predictor=Oracle(), preview=tmp_path / "few.png")  # fmt: skip
    title = Image.open(tmp_path / "few.png").text["Title"]
    assert title == "red one | red two | areas of interest (2)"


def test_the_preview_footer_names_the_scene_and_counts_the_polygons_written(
    two_squares, tmp_path, monkeypatch
):
    """Not the hidden VRT of the AOIs' window, and not the AOI outlines counted as polygons."""
    import fiacli.geo.preview as preview

    seen = []
    monkeypatch.setattr(
        preview, "_footer", lambda scene, n, name=None: seen.append((name, n)) or ""
    )
    scene, features = two_squares
    segment_areas(scene, "the red square", tmp_path / "o.gpkg", aoi=features, predictor=Oracle(),
                  preview=tmp_path / "o.png")  # fmt: skip
    written = len(gpd.read_file(tmp_path / "o.gpkg"))
    assert written > 0 and seen == [("scene.tif, AOI window", written)]


def test_a_16_bit_scene_is_shown_with_the_scene_wide_stretch(tmp_path):
    from rasterio.windows import Window

    from fiacli.geo.raster import open_scene

    rng = np.random.default_rng(4)
    data = (rng.random((3, 200, 200)) * 3000 + 500).astype(np.uint16)
    data[:, :50] += 4000  # the stretch must come from the whole scene, not the AOI's window
    scene = write_tif(tmp_path / "scene.tif", data)

    class Seeing(Oracle):
        def predict(self, chips, encoded):
            self.seen = chips.copy()
            return super().predict(chips, encoded)

    model = Seeing()  # a 64 x 64 window at scale 1: the picture is the window itself
    segment_areas(scene, "red", tmp_path / "o.tif", aoi=[px_box(100, 120, 164, 184)],
                  predictor=model)  # fmt: skip
    with open_scene(scene) as sc:
        expected, _ = sc.read(Window(100, 120, 64, 64))
    assert np.abs(model.seen[0].astype(int) - expected).max() <= 1


def test_real_raster_with_nodata_and_a_lonlat_aoi(tmp_path):
    from conftest import shared_path

    scene = shared_path("rasters", "RGB.byte.tif")  # EPSG:32618, nodata 0 around the image
    with rasterio.open(scene) as ds:
        t, crs = ds.transform, ds.crs
    corner = shapely.box(t.c + 20 * t.a, t.f + 220 * t.e, t.c + 220 * t.a, t.f + 20 * t.e)
    inner = shapely.box(t.c + 300 * t.a, t.f + 450 * t.e, t.c + 420 * t.a, t.f + 330 * t.e)
    utm = gpd.GeoDataFrame(geometry=[corner, inner], crs=crs)
    runs = []
    for k, frame in enumerate((utm, utm.to_crs("EPSG:4326"))):
        out = tmp_path / f"o{k}.tif"
        runs.append(segment_areas(scene, "red", out, aoi=frame, predictor=Oracle()))
    assert np.array_equal(read(tmp_path / "o0.tif"), read(tmp_path / "o1.tif"))
    assert [r["window"] for r in runs[0].areas] == [r["window"] for r in runs[1].areas]
    a = read(tmp_path / "o0.tif")
    with rasterio.open(scene) as ds:  # the scene's nodata corner stays nodata in the mask
        valid = ds.read_masks(1, window=rasterio.windows.Window(20, 20, 200, 200)) > 0
    mask = a[0, 20:220, 20:220]
    assert (~valid).any() and (mask[~valid] == 255).all() and (mask[valid] != 255).mean() > 0.99


def test_resolution_resamples_the_grid_the_aois_are_cut_from(two_squares, tmp_path):
    scene, features = two_squares  # 0.5 m pixels; at 1 m, A spans grid columns 10..70
    out = [tmp_path / "o.tif", tmp_path / "o.gpkg"]
    result = segment_areas(scene, "the red square on the left", out, aoi=features,
                           resolution=1.0, predictor=Oracle(),
                           preview=tmp_path / "o.png")  # fmt: skip
    assert (tmp_path / "o.png").exists()
    with rasterio.open(out[0]) as ds:
        assert (ds.width, ds.height) == (200, 100)
        assert ds.transform == rasterio.Affine(1, 0, T.c, 0, -1, T.f)
        mask = ds.read(1)
    assert result.areas[0]["window"] == [10, 20, 60, 60]
    assert mask[47:53, 22:28].all() and not (mask[:, 150:160] == 1).any()
    polygons = gpd.read_file(out[1])
    assert list(polygons["aoi_id"]) == [0]
    assert polygons.geometry.iloc[0].area == pytest.approx(100, rel=0.3)  # the 10 m square

    rgb = np.zeros((3, 200, 600), np.uint8)
    rgb[0] = 255
    red = write_tif(tmp_path / "red.tif", rgb)
    big = segment_areas(red, "red", tmp_path / "big.tif", aoi=[px_box(20, 20, 580, 180)],
                        resolution=1.0, predictor=Oracle())  # fmt: skip
    assert big.areas[0]["window"] == [10, 10, 280, 80]
    assert big.areas[0]["picture"]["mode"] == "scene of its own"
    assert (read(tmp_path / "big.tif", 1)[10:90, 10:290] == 1).all()

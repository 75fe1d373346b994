"""Areas of interest as read from the user (fiacli.geo.aoi) and their options (AreaOptions)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from fiacli.core.errors import FiacliError, UsageError
from fiacli.geo.aoi import (
    bbox_area,
    clip_to_scene,
    load_areas,
    parse_bbox,
    parse_fields,
    pixel_window,
    scene_footprint,
    window_vrt,
)

UTM = CRS.from_epsg(32633)
BOX = shapely.box(500010, 4099900, 500060, 4099950)


def frame(geoms, crs="EPSG:32633", **columns):
    return gpd.GeoDataFrame(columns, geometry=list(geoms), crs=crs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "four numbers"),
        ("1,2,3,x", "four numbers"),
        ("1,2,nan,4", "finite"),
        ("5,0,5,1", "MINX must be below MAXX"),
        ("0,3,1,2", "MINY below MAXY"),
    ],
)
def test_bad_bboxes_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_bbox(text)


def test_bbox_numbers_and_fields_lists():
    assert parse_bbox(" 1, 2,3.5,4 ") == (1.0, 2.0, 3.5, 4.0)
    assert parse_bbox([0, 0, 1, 1]) == (0.0, 0.0, 1.0, 1.0)
    assert parse_fields(["a,b", "c", "a"]) == ("a", "b", "c")
    assert parse_fields(None) == ()


def test_a_reprojected_bbox_is_densified():
    area = bbox_area("15.0,37.0,15.01,37.01", scene_crs=UTM, bbox_crs="EPSG:4326").areas[0]
    assert area.id == "bbox"
    assert len(area.geometry.exterior.coords) > 100  # edges follow the lat/lon lines
    assert 980_000 < area.geometry.area < 995_000  # 0.01° x 0.01° at 37°N: 889 m x 1,110 m


def test_a_file_that_does_not_open_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "parcels.gpkg"
    bad.write_text("not a geopackage")
    with pytest.raises(FiacliError, match="cannot read AOI file .*parcels.gpkg") as info:
        load_areas(bad, scene_crs=UTM)
    assert "\n" not in str(info.value) and "It might help" not in str(info.value)
    with pytest.raises(FiacliError, match="AOI file not found: .*nope.gpkg"):
        load_areas(tmp_path / "nope.gpkg", scene_crs=UTM)


def test_a_file_without_crs_is_refused_naming_it(tmp_path):
    path = tmp_path / "nocrs.shp"
    with pytest.warns(UserWarning):
        frame([BOX], crs=None).to_file(path)
    with pytest.raises(FiacliError, match=r"AOI file .*nocrs.shp has no CRS"):
        load_areas(path, scene_crs=UTM)
    got = load_areas(path, scene_crs=UTM, aoi_crs="EPSG:32633")
    assert got.areas[0].geometry.equals(BOX)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".parquet"])
def test_formats_layers_and_where(tmp_path, suffix):
    path = tmp_path / f"aoi{suffix}"
    data = frame([BOX, BOX.buffer(5)], name=["a", "b"], query=["red", "green"])
    if suffix == ".parquet":
        data.to_parquet(path)
    else:
        data.to_file(path)
    got = load_areas(path, scene_crs=UTM, where="name = 'b'", expression_field="query",
                     keep_fields=["name"])  # fmt: skip
    assert [(a.fields, a.expression) for a in got.areas] == [({"name": "b"}, "green")]
    with pytest.raises(FiacliError, match="--aoi-where \"name = 'zz'\" selects no feature"):
        load_areas(path, scene_crs=UTM, where="name = 'zz'")


def test_layer_choice(tmp_path):
    path = tmp_path / "two.gpkg"
    frame([BOX], kind=["a"]).to_file(path, layer="first")
    frame([BOX, BOX.buffer(1)], kind=["b", "c"]).to_file(path, layer="second")
    assert len(load_areas(path, scene_crs=UTM, layer="second").areas) == 2
    with pytest.raises(FiacliError, match="cannot read AOI file"):
        load_areas(path, scene_crs=UTM, layer="third")


def test_expression_field_errors_name_the_feature(tmp_path):
    path = tmp_path / "p.gpkg"
    frame([BOX, BOX.buffer(1)], query=["red", "  "]).to_file(path)
    with pytest.raises(FiacliError, match="--expression-field 'qry'.*no such attribute.*query"):
        load_areas(path, scene_crs=UTM, expression_field="qry")
    with pytest.raises(FiacliError, match="AOI feature 2 has an empty --expression-field"):
        load_areas(path, scene_crs=UTM, expression_field="query")  # GeoPackage FIDs start at 1
    with pytest.raises(FiacliError, match="--keep-fields 'owner'"):
        load_areas(path, scene_crs=UTM, keep_fields=["owner"])


def test_invalid_geometries_are_repaired_and_counted():
    bowtie = shapely.Polygon([(500000, 4099900), (500050, 4099950), (500050, 4099900),
                              (500000, 4099950)])  # fmt: skip
    got = load_areas(frame([bowtie, bowtie, BOX]), scene_crs=UTM)
    assert got.notes == ["2 invalid AOI geometries repaired with make_valid"]
    assert all(a.geometry.is_valid and a.geometry.area > 0 for a in got.areas)


def test_points_are_refused_and_missing_geometries_skipped():
    with pytest.raises(FiacliError, match="AOI feature 1 is a Point"):
        load_areas(frame([BOX, shapely.Point(500000, 4099900)]), scene_crs=UTM)
    got = load_areas(frame([BOX, None]), scene_crs=UTM)
    assert [a.id for a in got.areas] == [0]
    assert got.notes == ["1 AOI feature without geometry skipped (1)"]


def test_in_memory_inputs():
    # shapely geometries: the scene's CRS unless aoi_crs says otherwise
    assert load_areas([BOX], scene_crs=UTM).areas[0].geometry.equals(BOX)
    lonlat = gpd.GeoSeries([BOX], crs=UTM).to_crs(4326).iloc[0]
    back = load_areas(lonlat, scene_crs=UTM, aoi_crs="EPSG:4326").areas[0].geometry
    assert back.symmetric_difference(BOX).area < 1e-6  # vertex by vertex: there and back
    with pytest.raises(FiacliError, match="the AOI GeoDataFrame has no CRS"):
        load_areas(frame([BOX], crs=None), scene_crs=UTM)
    with pytest.raises(UsageError, match="filter the GeoDataFrame"):
        load_areas(frame([BOX]), scene_crs=UTM, where="a = 1")
    with pytest.raises(UsageError, match="not str"):
        load_areas([BOX, "x"], scene_crs=UTM)


def test_clip_to_scene_cuts_and_drops_with_a_warning():
    t = Affine(0.5, 0, 500000, 0, -0.5, 4100000)
    foot = scene_footprint(t, 200, 200)  # 100 m x 100 m
    got = load_areas([shapely.box(499990, 4099950, 500020, 4099980),
                      shapely.box(600000, 0, 600010, 10), BOX], scene_crs=UTM)  # fmt: skip
    kept, notes = clip_to_scene(got.areas, foot)
    assert [a.id for a in kept] == [0, 2]
    assert kept[0].geometry.equals(shapely.box(500000, 4099950, 500020, 4099980))
    assert notes == ["AOI feature 1 lies outside the scene; skipped"]
    w = pixel_window(kept[0].geometry, t, 200, 200)
    assert w.as_list() == [0, 40, 40, 60]


def test_pixel_windows_cover_partial_pixels_only_when_they_matter():
    t = Affine(1, 0, 0, 0, -1, 100)

    def window(*bounds):
        w = pixel_window(shapely.box(*bounds), t, 100, 100)
        return None if w is None else w.as_list()

    assert window(10.2, 50, 20.5, 60.0) == [10, 40, 11, 10]
    assert window(10.0, 50, 20.001, 60) == [10, 40, 10, 10]  # 0.001 px holds no pixel centre
    assert window(200, 50, 210, 60) is None


def test_window_vrt_escapes_and_masks(tmp_path):
    from fiacli.geo.aoi import PixelWindow

    text = window_vrt("/data/a&b.tif", crs_wkt=UTM.to_wkt(), indexes=(3, 2, 1),
                      src=PixelWindow(5, 6, 70, 40), size=(64, 64),
                      dst=PixelWindow(0, 14, 64, 36), transform=Affine.identity(),
                      resampling="bilinear", no_overviews=True)  # fmt: skip
    assert "a&amp;b.tif" in text and "<MaskBand>" in text  # padded: the rest is nodata
    assert text.count("<SourceBand>3</SourceBand>") == 2  # red, and the mask's constant 255
    assert "OVERVIEW_LEVEL" in text
    whole = PixelWindow(0, 0, 9, 9)
    plain = window_vrt("a.tif", crs_wkt="", indexes=(1, 2, 3), src=whole, size=(9, 9),
                       dst=whole, transform=Affine.identity())  # fmt: skip
    assert "<MaskBand>" not in plain and np.char.count(plain, "SimpleSource") == 6

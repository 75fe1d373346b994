"""Opening scenes: band choice, scene-wide stretch, nodata in every form, resampling, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from _oracle import UTM_TRANSFORM, write_tif
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from fiacli.core.errors import FiacliError, UsageError
from fiacli.geo.raster import FILL_RGB, RasterRowWriter, open_scene, parse_bands, scene_stretch

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_parse_bands():
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands("2") == (2,)
    assert parse_bands(None) is None
    for bad in ("1,2", "a,b,c", "0,1,2", "1,2,3,4"):
        with pytest.raises(UsageError):
            parse_bands(bad)


def test_default_bands_follow_colour_interpretation(tmp_path):
    data = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    path = write_tif(tmp_path / "bgrn.tif", data, photometric="MINISBLACK")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [
            ColorInterp.blue,
            ColorInterp.green,
            ColorInterp.red,
            ColorInterp.undefined,
        ]
    with open_scene(path) as scene:
        assert scene.indexes == (3, 2, 1)
        rgb, valid = scene.read(Window(0, 0, 8, 8))
        assert np.array_equal(rgb, data[[2, 1, 0]]) and valid.all()
    with open_scene(path, bands=(4, 1, 2)) as scene:
        assert scene.indexes == (4, 1, 2)


def test_first_three_bands_without_colour_interpretation_and_single_band_repeated(tmp_path):
    path = write_tif(tmp_path / "five.tif", np.zeros((5, 4, 4), np.uint8), photometric="MINISBLACK")
    with open_scene(path) as scene:
        assert scene.indexes == (1, 2, 3)
    grey = write_tif(tmp_path / "grey.tif", np.full((1, 4, 4), 9, np.uint8))
    with open_scene(grey) as scene:
        assert scene.indexes == (1, 1, 1)
        assert any("repeating" in w for w in scene.warnings)
        rgb, _ = scene.read(Window(0, 0, 4, 4))
        assert (rgb == 9).all()


def test_band_refusals(tmp_path):
    path = write_tif(tmp_path / "one.tif", np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(FiacliError, match="has 1 band; --bands asks for band 3"):
        open_scene(path, bands=(1, 2, 3))
    two = write_tif(tmp_path / "two.tif", np.zeros((2, 4, 4), np.uint8), photometric="MINISBLACK")
    with pytest.raises(FiacliError, match="2 data bands"):
        open_scene(two)


def test_zero_bands_missing_file_and_not_a_raster(tmp_path):
    container = tmp_path / "two.gpkg"  # two raster tables: the file itself has zero bands
    for i, table in enumerate(("a", "b")):
        with rasterio.open(
            container,
            "w",
            driver="GPKG",
            width=8,
            height=8,
            count=3,
            dtype="uint8",
            crs="EPSG:3857",
            transform=Affine(1, 0, 0, 0, -1, 8),
            RASTER_TABLE=table,
            APPEND_SUBDATASET="YES" if i else "NO",
        ) as ds:
            ds.write(np.zeros((3, 8, 8), np.uint8))  # fmt: skip
    with pytest.raises(FiacliError, match="no raster bands; open one of its subdatasets"):
        open_scene(container)
    with pytest.raises(FiacliError, match="scene not found"):
        open_scene(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(FiacliError, match="cannot read .*notes.tif as a raster"):
        open_scene(text)
    with pytest.raises(FiacliError, match="directory"):
        open_scene(tmp_path)


def test_georeferencing_is_required_unless_allowed(tmp_path):
    path = write_tif(
        tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8), crs=None, transform=None
    )
    with pytest.raises(FiacliError, match="not georeferenced.*--allow-ungeoreferenced"):
        open_scene(path)
    with open_scene(path, allow_ungeoreferenced=True) as scene:
        assert scene.crs is None and scene.transform == Affine.identity()
    gcps = [GroundControlPoint(0, 0, 10, 20), GroundControlPoint(8, 8, 18, 12),
            GroundControlPoint(0, 8, 10, 12)]  # fmt: skip
    gpath = write_tif(tmp_path / "gcp.tif", np.zeros((3, 8, 8), np.uint8), crs=None, transform=None)
    with rasterio.open(gpath, "r+") as ds:
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(4326))
    with pytest.raises(FiacliError, match="ground control points.*gdalwarp"):
        open_scene(gpath)


def test_uint16_stretch_is_scene_wide_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (4, 60, 80)).astype(np.uint16)
    data[:, :, 40:] += 20000  # a bright right half: per-tile stretching would hide it
    path = write_tif(tmp_path / "u16.tif", data, photometric="MINISBLACK")
    with open_scene(path) as scene:
        lo, hi = np.percentile(data[:3].reshape(3, -1).astype(float), [2, 98], axis=1)
        np.testing.assert_allclose(scene.stretch.lo, lo)
        np.testing.assert_allclose(scene.stretch.hi, hi)
        left, _ = scene.read(Window(0, 0, 40, 60))
        right, _ = scene.read(Window(40, 0, 40, 60))
        expected = np.clip(np.rint((data[:3].astype(np.float32) - lo[:, None, None])
                                   * (255 / (hi - lo))[:, None, None]), 0, 255)  # fmt: skip
        assert np.array_equal(left, expected[:, :, :40]) and np.array_equal(
            right, expected[:, :, 40:]
        )
        assert left.mean() < 60 < 190 < right.mean()


def test_stretch_from_sample_windows_on_a_large_scene_without_overviews(tmp_path):
    data = np.tile(np.arange(1000, dtype=np.uint16), (3, 600, 1))
    path = write_tif(tmp_path / "big.tif", data, tiled=True)
    with rasterio.open(path) as ds:
        s = scene_stretch(ds, (1, 2, 3), max_pixels=10_000)  # forces the 8x8 windows path
    # the 64 windows tile the columns evenly, so the sample has the scene's distribution
    np.testing.assert_allclose(s.lo, 20, atol=2)
    np.testing.assert_allclose(s.hi, 979, atol=2)


def test_nodata_value_mask_band_alpha_and_nan(tmp_path):
    data = np.full((3, 6, 6), 50, np.uint8)
    data[:, 0, :] = 0
    nd = write_tif(tmp_path / "nd.tif", data, nodata=0)
    with open_scene(nd) as scene:
        rgb, valid = scene.read(Window(0, 0, 6, 6))
    assert not valid[0].any() and valid[1:].all()
    assert (rgb[:, 0, :] == np.array(FILL_RGB)[:, None]).all()  # filled, not black

    rgba = np.concatenate([np.full((3, 6, 6), 50, np.uint8), np.full((1, 6, 6), 255, np.uint8)])
    rgba[3, :, :2] = 0
    alpha = write_tif(tmp_path / "alpha.tif", rgba, photometric="RGB", alpha="YES")
    with open_scene(alpha) as scene:
        assert scene.indexes == (1, 2, 3)
        _, valid = scene.read(Window(0, 0, 6, 6))
    assert not valid[:, :2].any() and valid[:, 2:].all()

    masked = write_tif(tmp_path / "mask.tif", np.full((3, 6, 6), 50, np.uint8))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as ds:
        m = np.full((6, 6), 255, np.uint8)
        m[5, 5] = 0
        ds.write_mask(m)
    with open_scene(masked) as scene:
        _, valid = scene.read(Window(0, 0, 6, 6))
    assert valid.sum() == 35 and not valid[5, 5]

    f = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    f[1, 2, 3] = np.nan
    nan = write_tif(tmp_path / "nan.tif", f)  # NaN without a declared nodata value
    with open_scene(nan) as scene:
        rgb, valid = scene.read(Window(0, 0, 6, 6))
    assert valid.sum() == 35 and not valid[2, 3]
    assert rgb.dtype == np.uint8


def test_all_nodata_scene_opens_with_a_neutral_stretch(tmp_path):
    path = write_tif(tmp_path / "void.tif", np.zeros((3, 10, 10), np.uint16), nodata=0)
    with open_scene(path) as scene:
        _, valid = scene.read(Window(0, 0, 10, 10))
    assert not valid.any()


def test_resolution_resamples_on_the_same_crs_and_orientation(tmp_path):
    data = np.zeros((3, 40, 60), np.uint8)
    data[:, :, 30:] = 200
    path = write_tif(tmp_path / "half.tif", data)  # 0.5 m pixels
    with open_scene(path, resolution=1.0) as scene:
        assert (scene.width, scene.height) == (30, 20)
        t = scene.transform
        assert (t.a, t.e, t.c, t.f) == (1.0, -1.0, UTM_TRANSFORM.c, UTM_TRANSFORM.f)
        rgb, valid = scene.read(Window(0, 0, 30, 20))
        assert valid.all() and rgb[0, 10, 5] == 0 and rgb[0, 10, 25] == 200
    geo = write_tif(tmp_path / "geo.tif", data, crs="EPSG:4326",
                    transform=Affine(1e-5, 0, 10, 0, -1e-5, 45))  # fmt: skip
    with open_scene(geo, resolution=2.0) as scene:  # ~0.79 m x 1.11 m pixels at 45°N
        assert scene.width == 24 and scene.height == 23
    with pytest.raises(UsageError):
        open_scene(path, resolution=-1)
    with open_scene(path, resolution=0.0625) as scene:  # 8x finer a side: the most allowed
        assert (scene.width, scene.height) == (480, 320)
    with pytest.raises(UsageError, match=r"upsample .* 10x a side .* at most 8x"):
        open_scene(path, resolution=0.05)  # 10x: an hours-long run with nothing to gain
    tall = write_tif(tmp_path / "tall.tif", data, transform=Affine(1, 0, 0, 0, -10, 0))
    with pytest.raises(UsageError, match="50x a side"):  # 5x across, but 50x down
        open_scene(tall, resolution=0.2)


def test_row_writer_writes_rows_in_any_block_heights(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, (2, 1100, 70)).astype(np.uint8)
    w = RasterRowWriter(tmp_path / "o.tif", width=70, height=1100, count=2,
                        transform=UTM_TRANSFORM, crs="EPSG:32633", nodata=255)  # fmt: skip
    y = 0
    for h in (1, 383, 384, 200, 132):
        w.write(data[:, y : y + h])
        y += h
    w.close(overview_resampling=rasterio.enums.Resampling.nearest)
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert np.array_equal(ds.read(), data)
        assert ds.block_shapes[0] == (512, 512) and ds.compression.name == "zstd"
        assert ds.overviews(1) == [2, 4] and ds.nodata == 255

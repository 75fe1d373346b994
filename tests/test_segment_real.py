"""``fiacli segment`` on real GeoTIFFs from ../shared/rasters (through ``shared_path``).

cogeo.tif: 1024² RGB aerial, EPSG:3857, JPEG-compressed COG with overviews and a mask band;
RGB.byte.tif: 791x718 Landsat, EPSG:32618, nodata 0; rgb-byte-tenth.tif: 79x71, smaller than a chip.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from _oracle import Oracle, read
from conftest import shared_path

from fiacli.app.pipeline import segment_raster


def raster(name: str):
    return shared_path("rasters", name)


def check_same_grid(src_path, out_path):
    with rasterio.open(src_path) as src, rasterio.open(out_path) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform  # exactly, not approximately
        assert (out.width, out.height) == (src.width, src.height)
        return src.dataset_mask() > 0


@pytest.mark.parametrize("name", ["cogeo.tif", "RGB.byte.tif", "rgb-byte-tenth.tif"])
def test_real_rasters_keep_grid_and_nodata(tmp_path, name):
    src = raster(name)
    outs = [tmp_path / "m.tif", tmp_path / "v.gpkg"]
    oracle = Oracle(image_size=480)  # the paper's chip: the tenth-size scene is padded
    result = segment_raster(src, "red", outs, predictor=oracle, probabilities=tmp_path / "p.tif")
    for out in ("m.tif", "p.tif"):
        valid = check_same_grid(src, tmp_path / out)
    with rasterio.open(src) as ds:
        red = ds.read(1)
    mask = read(tmp_path / "m.tif", 1)
    assert np.array_equal(mask == 255, ~valid)  # nodata exactly where the source has none
    assert np.array_equal(mask[valid], (red[valid] >= 128).astype(np.uint8))
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert np.array_equal(ds.read_masks(1) > 0, valid)
    frame = gpd.read_file(tmp_path / "v.gpkg")
    with rasterio.open(src) as ds:
        assert frame.crs == ds.crs
        assert shapely.box(*ds.bounds).buffer(1e-6).contains(shapely.union_all(frame.geometry))
    assert int(frame["pixels"].sum()) == int((mask == 1).sum())
    assert result.scene["valid_pixels"] == int(valid.sum())


def test_landsat_nodata_chips_and_pixels(tmp_path):
    src = raster("RGB.byte.tif")
    result = segment_raster(src, "red", tmp_path / "m.tif", predictor=Oracle(image_size=128),
                            overlap=16)  # fmt: skip
    assert result.chips["skipped_nodata"] > 0  # the collar of the rotated Landsat frame
    with rasterio.open(src) as ds:
        assert result.scene["valid_pixels"] == int((ds.dataset_mask() > 0).sum())


def test_scene_scope_on_a_real_cog(tmp_path):
    src = raster("cogeo.tif")
    result = segment_raster(src, "the red roof on the left", tmp_path / "m.tif",
                            predictor=Oracle(image_size=256), scope="scene")  # fmt: skip
    mask = read(tmp_path / "m.tif", 1)
    assert result.options["effective_scope"] == "scene"
    assert mask[:, 600:].max() == 0  # nothing in the right part of the scene ...
    assert (mask[:, :500] == 1).sum() > 1000  # ... but plenty on the left
    assert result.chips["skipped_outside"] > 0

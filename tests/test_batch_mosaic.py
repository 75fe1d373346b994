"""--mosaic: tiles segmented as one scene, so tile seams are blended like chip seams."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from _oracle import UTM_TRANSFORM, Oracle, random_rgb, read, write_tif
from affine import Affine

from fiacli.app.batch import BatchOptions, segment_many
from fiacli.app.pipeline import segment_raster
from fiacli.app.vrt import mosaic_xml, write_vrt
from fiacli.core.errors import FiacliError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@dataclass
class Model:
    predictor: Any = field(default_factory=lambda: Oracle(radius=2))
    model_info: dict[str, Any] = field(default_factory=lambda: {"path": "oracle", "name": None})


def cut(rgb: np.ndarray, folder: Path, rows: list[int], cols: list[int], skip=()) -> list[Path]:
    """Tiles of ``rgb`` (bands, H, W) cut at ``rows``/``cols``, each georeferenced in place."""
    folder.mkdir(exist_ok=True)
    ys, xs = [0, *rows, rgb.shape[1]], [0, *cols, rgb.shape[2]]
    tiles = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            if (i, j) in skip:
                continue
            t = UTM_TRANSFORM @ Affine.translation(xs[j], ys[i])
            part = rgb[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            tiles.append(write_tif(folder / f"tile_{i}_{j}.tif", np.ascontiguousarray(part),
                                   transform=t))  # fmt: skip
    return tiles


def polygons(path: Path) -> list[tuple]:
    f = gpd.read_file(path)
    rows = zip(f.expression, f.geometry, f.pixels, f.mean_prob, strict=True)
    return sorted((e, shapely.normalize(g).wkb, int(p), round(float(m), 4)) for e, g, p, m in rows)


@pytest.mark.parametrize("parts", [None, 2])
def test_a_mosaic_of_tiles_equals_the_scene_they_were_cut_from(tmp_path, parts):
    rgb = random_rgb(200, 260, seed=7)
    whole = write_tif(tmp_path / "whole.tif", rgb)
    tiles = cut(rgb, tmp_path / "tiles", [90], [100, 170])
    (tmp_path / "one").mkdir()
    kw = dict(chip=48, overlap=16)
    segment_raster(whole, ["red"], [tmp_path / "one" / "m.tif", tmp_path / "one" / "m.gpkg"],
                   predictor=Oracle(radius=2), **kw)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    batch = BatchOptions(mosaic=True, split_scene=parts is not None)
    result = segment_many(tiles, ["red"], [out / "m.tif", out / "m.gpkg"], model=Model(),
                          batch=batch, split_parts=parts, **kw)  # fmt: skip
    assert [r["status"] for r in result.rows] == ["done"]
    assert result.rows[0]["scene"] == str(out / "m.vrt")
    assert np.array_equal(read(out / "m.tif"), read(tmp_path / "one" / "m.tif"))
    with rasterio.open(out / "m.tif") as a, rasterio.open(whole) as b:
        assert a.transform == b.transform and a.crs == b.crs
    got, want = polygons(out / "m.gpkg"), polygons(tmp_path / "one" / "m.gpkg")
    assert got == want and len(got) > 20  # objects crossing tile seams come out whole
    manifest = json.loads((out / "m.manifest.json").read_text())
    assert manifest["scene"]["path"] == str(out / "m.vrt")
    again = segment_many(tiles, ["red"], [out / "m.tif", out / "m.gpkg"], model=Model(),
                         batch=batch, split_parts=parts, **kw)  # fmt: skip
    assert [r["status"] for r in again.rows] == ["skipped"]


def test_pixels_no_tile_covers_are_nodata(tmp_path):
    rgb = random_rgb(120, 120, seed=2)
    tiles = cut(rgb, tmp_path / "tiles", [60], [60], skip={(1, 1)})
    out = tmp_path / "out"
    out.mkdir()
    segment_many(tiles, ["red"], [out / "m.tif"], model=Model(), chip=48, overlap=16,
                 batch=BatchOptions(mosaic=True))  # fmt: skip
    mask = read(out / "m.tif", 1)
    assert mask.shape == (120, 120)
    assert (mask[60:, 60:] == 255).all() and (mask[:60, :] != 255).all()


def test_a_mosaic_vrt_is_a_scene_like_any_other(tmp_path):
    rgb = random_rgb(100, 130, seed=3)
    whole = write_tif(tmp_path / "whole.tif", rgb)
    tiles = cut(rgb, tmp_path / "tiles", [50], [64])
    xml, grid = mosaic_xml(tiles)
    vrt = write_vrt(tmp_path / "m.vrt", xml)
    assert (grid.height, grid.width) == (100, 130)
    with rasterio.open(vrt) as a, rasterio.open(whole) as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
        assert (a.read_masks() == 255).all()
    segment_raster(vrt, "red", [tmp_path / "a.tif"], predictor=Oracle(), chip=48, overlap=16)
    segment_raster(whole, "red", [tmp_path / "b.tif"], predictor=Oracle(), chip=48, overlap=16)
    assert np.array_equal(read(tmp_path / "a.tif"), read(tmp_path / "b.tif"))


def test_tiles_that_do_not_fit_one_grid_are_refused_clearly(tmp_path):
    rgb = random_rgb(40, 40)
    a = write_tif(tmp_path / "a.tif", rgb)
    other_crs = write_tif(tmp_path / "b.tif", rgb, crs="EPSG:32634")
    coarse = write_tif(
        tmp_path / "c.tif", rgb, transform=Affine(1.0, 0, 500000.0, 0, -1.0, 4100000.0)
    )
    shifted = write_tif(
        tmp_path / "d.tif", rgb, transform=UTM_TRANSFORM @ Affine.translation(0.3, 0)
    )
    bare = write_tif(tmp_path / "e.tif", rgb, crs=None, transform=None)
    for tile, message in ((other_crs, "one CRS"), (coarse, "one resolution"),
                          (shifted, "not aligned"), (bare, "CRS")):  # fmt: skip
        with pytest.raises(FiacliError, match=message):
            mosaic_xml([a, tile])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FiacliError, match="one CRS"):
        segment_many([a, other_crs], "red", [out / "m.gpkg"], model=Model(),
                     batch=BatchOptions(mosaic=True))  # fmt: skip
    assert not (out / "m.vrt").exists()


def test_a_mosaic_vrt_that_exists_is_not_replaced_without_f(tmp_path):
    rgb = random_rgb(100, 130, seed=3)
    tiles = cut(rgb, tmp_path / "tiles", [50], [64])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "mosaic.vrt"
    mine.write_text("a file of the user's")
    with pytest.raises(FiacliError, match="mosaic.vrt already exists; pass -f"):
        segment_many(tiles, "red", [out / "{stem}.tif"], model=Model(),
                     batch=BatchOptions(mosaic=True), chip=48, overlap=16)  # fmt: skip
    assert mine.read_text() == "a file of the user's"
    done = segment_many(tiles, "red", [out / "{stem}.tif"], model=Model(), overwrite=True,
                        batch=BatchOptions(mosaic=True), chip=48, overlap=16)  # fmt: skip
    assert [r["status"] for r in done.rows] == ["done"]
    assert mine.read_text() != "a file of the user's"
    again = segment_many(tiles, "red", [out / "{stem}.tif"], model=Model(),
                         batch=BatchOptions(mosaic=True), chip=48, overlap=16)  # fmt: skip
    assert [r["status"] for r in again.rows] == ["skipped"]  # its own VRT, unchanged: no -f

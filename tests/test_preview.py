"""``segment --preview``: the quicklook outlines the result where it is, and only there."""

from __future__ import annotations

import numpy as np
import pytest
from _oracle import Oracle, write_tif
from PIL import Image

import fiacli.app.pipeline
from fiacli.app.pipeline import segment_raster
from fiacli.geo.preview import COLORS, MAX_SIDE

MAGENTA = np.array(COLORS[0])
CYAN = np.array(COLORS[1])

# a 1,200 × 900 scene: dark red channel except two bright boxes (rows, cols), one red, one blue
H, W = 900, 1200
RED_BOX = (slice(600, 660), slice(200, 290))
BLUE_BOX = (slice(100, 140), slice(900, 960))


@pytest.fixture
def scene(tmp_path):
    rgb = np.full((3, H, W), 90, np.uint8)
    rgb[0] = 20
    rgb[2] = 20
    rgb[(0, *RED_BOX)] = 250
    rgb[(2, *BLUE_BOX)] = 250
    return write_tif(tmp_path / "scene.tif", rgb, tiled=True)


def map_of(png):
    """The map part of a preview as an array, found from the box the PNG records."""
    image = Image.open(png)
    x0, y0, x1, y1 = (int(v) for v in image.text["fiacli:map_box"].split(","))
    return np.asarray(image.convert("RGB"))[y0:y1, x0:x1], image


def near(mask: np.ndarray, box: tuple[slice, slice], scale: float, pad: int) -> np.ndarray:
    """``mask`` restricted to ``box`` (scene rows/cols) scaled to the preview, grown by ``pad``."""
    out = np.zeros_like(mask)
    r0, r1 = int(box[0].start * scale) - pad, int(box[0].stop * scale) + pad
    c0, c1 = int(box[1].start * scale) - pad, int(box[1].stop * scale) + pad
    out[max(r0, 0) : r1, max(c0, 0) : c1] = mask[max(r0, 0) : r1, max(c0, 0) : c1]
    return out


def test_outline_is_around_the_object_and_nowhere_else(scene, tmp_path):
    png = tmp_path / "look.png"
    result = segment_raster(scene, "the red box", tmp_path / "o.gpkg", predictor=Oracle(),
                            preview=png)  # fmt: skip
    assert result.outputs["preview"] == str(png)
    rgb, image = map_of(png)
    scale = min(1.0, MAX_SIDE / max(H, W))
    assert rgb.shape[:2] == (round(H * scale), round(W * scale))
    outline = (rgb == MAGENTA).all(axis=2)
    around = near(outline, RED_BOX, scale, pad=4)
    assert around.sum() > 2 * (RED_BOX[0].stop - RED_BOX[0].start) * scale  # a ring, not a dot
    assert outline.sum() == around.sum()  # nothing outlined anywhere else
    inside = rgb[int(610 * scale) : int(650 * scale), int(210 * scale) : int(280 * scale)]
    assert not (inside == MAGENTA).all(axis=2).any()  # outlined, not filled
    assert image.text["Title"] == "the red box"


def test_two_expressions_get_two_colours(scene, tmp_path):
    png = tmp_path / "look.png"
    segment_raster(scene, ["the red box", "the blue box"], tmp_path / "o.tif",
                   predictor=Oracle(), preview=png)  # fmt: skip
    rgb, image = map_of(png)
    scale = min(1.0, MAX_SIDE / max(H, W))
    magenta, cyan = (rgb == MAGENTA).all(axis=2), (rgb == CYAN).all(axis=2)
    assert magenta.sum() == near(magenta, RED_BOX, scale, 4).sum() > 0
    assert cyan.sum() == near(cyan, BLUE_BOX, scale, 4).sum() > 0
    assert image.text["Title"] == "the red box | the blue box"


def test_tiny_objects_get_a_ring_so_they_stay_visible(tmp_path):
    rgb = np.full((3, 3000, 3000), 60, np.uint8)
    rgb[0, 1500:1503, 700:703] = 255  # 3 px in the scene: under one preview pixel
    path = write_tif(tmp_path / "big.tif", rgb, tiled=True)
    png = tmp_path / "look.png"
    segment_raster(path, "red", [], predictor=Oracle(image_size=256), preview=png)
    view, _ = map_of(png)
    outline = (view == MAGENTA).all(axis=2)
    rows, cols = np.nonzero(outline)
    scale = MAX_SIDE / 3000
    assert outline.sum() > 30  # a ring several pixels across, not a speck
    assert abs(rows.mean() - 1501 * scale) < 2 and abs(cols.mean() - 701 * scale) < 2
    # and a zoomed inset beside the map shows it at full resolution, outlined too
    whole = np.asarray(Image.open(png).convert("RGB"))
    x1 = int(Image.open(png).text["fiacli:map_box"].split(",")[2])
    assert (whole[:, x1:] == MAGENTA).all(axis=2).sum() > 10


def test_preview_reads_the_scene_at_preview_size_only(scene, tmp_path, monkeypatch):
    calls = []
    real = fiacli.geo.raster.Scene.read_overview

    def spy(self, height, width):
        calls.append((height, width))
        return real(self, height, width)

    monkeypatch.setattr(fiacli.geo.raster.Scene, "read_overview", spy)
    segment_raster(scene, "red", tmp_path / "o.gpkg", predictor=Oracle(),
                   preview=tmp_path / "p.png")  # fmt: skip
    assert calls and max(max(c) for c in calls) <= MAX_SIDE


def test_nothing_found_still_writes_a_titled_preview(scene, tmp_path):
    png = tmp_path / "look.png"
    result = segment_raster(scene, "the green box", tmp_path / "o.gpkg", predictor=Oracle(),
                            preview=png, threshold=0.9)  # fmt: skip
    assert result.per_expression[0]["polygons"] == 0
    rgb, image = map_of(png)
    assert not (rgb == MAGENTA).all(axis=2).any()
    assert image.text["Title"] == "the green box"


def test_cli_preview_option(run_cli, oracle, scene, tmp_path):
    png = tmp_path / "look.png"
    r = run_cli("segment", str(scene), "the red box", "-m", "m.safetensors",
                "-o", str(tmp_path / "o.gpkg"), "--preview", str(png))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert f"wrote {png}" in r.stdout
    assert (map_of(png)[0] == MAGENTA).all(axis=2).any()


@pytest.mark.parametrize("name", ["look.jpg", "look"])
def test_preview_must_be_a_png_and_nothing_is_written(run_cli, oracle, scene, tmp_path, name):
    r = run_cli("segment", str(scene), "red", "-m", "m", "-o", str(tmp_path / "o.gpkg"),
                "--preview", str(tmp_path / name))  # fmt: skip
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and ".png" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_existing_preview_is_refused_before_any_work(run_cli, oracle, scene, tmp_path):
    png = tmp_path / "look.png"
    png.write_bytes(b"old")
    r = run_cli("segment", str(scene), "red", "-m", "m", "-o", str(tmp_path / "o.gpkg"),
                "--preview", str(png))  # fmt: skip
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert png.read_bytes() == b"old" and not oracle.batches

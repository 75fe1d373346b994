"""``fiacli segment`` with a real FIANet: a random-weight fianet-tiny saved as a fiacli checkpoint.

The oracle tests prove the tiling; these prove that the real predictor (text encoded once, uint8
chips in, probabilities out) plugs into the pipeline and the CLI end to end. Building and loading
even the tiny model (with its MiniLM text encoder) takes seconds, hence ``slow``.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from _oracle import random_rgb, write_tif
from conftest import shared_path

pytestmark = pytest.mark.slow


def _checkpoint(path, image_size: int):
    from fiacli.models import create_model, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    torch.manual_seed(0)
    model = create_model("fianet-tiny", image_size=image_size)
    return save_checkpoint(path, model, {"parse": ParseSettings().to_dict()})


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("model") / "tiny64.safetensors", 64)


def test_cli_with_a_real_checkpoint(run_cli, tiny64, tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(100, 90))
    out = [str(tmp_path / n) for n in ("o.tif", "o.fgb", "p.tif")]
    r = run_cli("segment", str(scene), "-e", "the white van on the left", "-e", "the road",
                "-m", str(tiny64), "-o", out[0], "-o", out[1], "--probabilities", out[2],
                "--device", "cpu", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["options"]["chip"] == 64  # the checkpoint's image size
    assert summary["chips"]["predicted"] == summary["chips"]["total"] == 4
    with rasterio.open(tmp_path / "p.tif") as ds:
        probs = ds.read()
        assert ds.count == 2 and ds.transform == rasterio.open(scene).transform
    assert probs.std() > 0  # a real network: not a constant
    gpd.read_file(tmp_path / "o.fgb")  # opens (may hold any number of polygons)


def test_scene_scope_with_the_real_predictor(tiny64, tmp_path):
    from fiacli.app.pipeline import segment_raster
    from fiacli.app.predictor import RefSegPredictor

    scene = write_tif(tmp_path / "s.tif", random_rgb(64, 200))
    predictor = RefSegPredictor.from_checkpoint(tiny64, device="cpu")
    result = segment_raster(scene, "the white van on the left", tmp_path / "m.tif",
                            predictor=predictor, scope="scene", threshold=0.0)  # fmt: skip
    assert result.options["effective_scope"] == "scene"
    mask = rasterio.open(tmp_path / "m.tif").read(1)
    assert set(np.unique(mask)) <= {0, 1}


def test_paper_size_model_on_the_real_landsat_scene(run_cli, tmp_path):
    model = _checkpoint(tmp_path / "tiny480.safetensors", 480)
    src = shared_path("rasters", "RGB.byte.tif")
    r = run_cli("segment", str(src), "the lake in the middle", "-m", str(model), "-o",
                str(tmp_path / "lake.tif"), "--device", "cpu", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["chips"]["total"] == 4
    with rasterio.open(src) as s, rasterio.open(tmp_path / "lake.tif") as o:
        assert o.transform == s.transform and o.crs == s.crs
        assert np.array_equal(o.read(1) == 255, s.dataset_mask() == 0)

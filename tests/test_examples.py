"""Every script in examples/ runs, as a user would run it (a subprocess), with small settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from conftest import REPO, shared_path
from rasterio.windows import Window

EXAMPLES = REPO / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".sh", ".py"))


@pytest.fixture
def env(tmp_path):
    """The user's environment with fiacli on PATH, a private config folder, one thread."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FIACLI_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_every_example_is_tested_and_documented():
    tested = {"quick_start.sh", "python_api.py", "train_and_evaluate.sh", "convert_released.sh",
              "segment_real_raster.sh", "train_demo_model.sh"}  # fmt: skip
    assert set(SCRIPTS) == tested
    for name in SCRIPTS:
        head = (EXAMPLES / name).read_text().splitlines()[:12]
        assert any(name in line for line in head), f"{name}: no usage line at the top"


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s.endswith(".sh")])
def test_shell_examples_parse(name):
    subprocess.run(["bash", "-n", str(EXAMPLES / name)], check=True)


def test_python_api_example_help(env, tmp_path):
    out = run([sys.executable, str(EXAMPLES / "python_api.py"), "--help"], env, tmp_path)
    assert "segment" in out.stdout


@pytest.mark.slow  # the whole 2,048² demo scene through the demo model (about 20 s on 2 cores)
def test_quick_start(env, tmp_path):
    from shapely.geometry import box

    from fiacli.app.demo import DEMO_EXPRESSION, demo_truth

    run(["bash", str(EXAMPLES / "quick_start.sh"), str(tmp_path / "out")], env, tmp_path)
    polygons = gpd.read_file(tmp_path / "out" / "demo.gpkg")
    truth = demo_truth()
    (target,) = truth["expressions"][DEMO_EXPRESSION]
    assert len(polygons) == 1 and polygons.intersects(box(*truth["objects"][target]["bbox_map"]))[0]
    assert (tmp_path / "out" / "demo.png").is_file()


@pytest.mark.slow
def test_python_api_example_on_a_crop_of_the_demo_scene(env, tmp_path):
    from fiacli.app.demo import DEMO_EXPRESSION, demo_scene_path, demo_truth

    truth = demo_truth()
    (target,) = truth["expressions"][DEMO_EXPRESSION]
    x0, y0 = (v - 150 for v in truth["objects"][target]["bbox_px"][:2])
    crop = tmp_path / "crop.tif"
    with rasterio.open(demo_scene_path()) as src:
        window = Window(x0, y0, 320, 320)
        profile = {**src.profile, "width": 320, "height": 320,
                   "transform": src.window_transform(window), "blockxsize": 256,
                   "blockysize": 256}  # fmt: skip
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    out = run([sys.executable, str(EXAMPLES / "python_api.py"), str(crop), DEMO_EXPRESSION,
               "--out", str(tmp_path / "out")], env, tmp_path)  # fmt: skip
    assert "polygon(s)" in out.stdout and "most confident" in out.stdout
    assert "demo model" in out.stderr  # no -m: the bundled model, and it says so
    assert (tmp_path / "out" / "result.png").is_file()


@pytest.mark.slow
def test_train_and_evaluate_example(env, tmp_path):
    small = {"TRAIN_REFS": "16", "VAL_REFS": "8", "TEST_REFS": "8", "SIZE": "64", "EPOCHS": "1"}
    work = tmp_path / "work"
    out = run(["bash", str(EXAMPLES / "train_and_evaluate.sh"), str(work)], {**env, **small},
              tmp_path)  # fmt: skip
    metrics = json.loads((work / "test_metrics.json").read_text())
    assert metrics["metrics"]["n"] == 8
    assert "<html>" in (work / "report.html").read_text()
    assert "-m synth-example" in out.stdout
    registry = json.loads((tmp_path / "home" / "models.json").read_text())
    assert registry["models"]["synth-example"]["path"] == str(work / "run" / "best.safetensors")


@pytest.mark.slow  # converts the parity fixture (a small FIANet with the released key names)
def test_convert_released_example(env, tmp_path):
    weights = shared_path("fixtures", "official_parity", "weights.safetensors")
    run(["bash", str(EXAMPLES / "convert_released.sh"), str(weights), "parity", str(tmp_path)],
        env, tmp_path)  # fmt: skip
    assert (tmp_path / "parity.safetensors").is_file()
    listing = run([sys.executable, "-m", "fiacli", "models", "--json"], env, tmp_path)
    names = {m["name"]: m for m in json.loads(listing.stdout)["models"]}
    assert names["parity"]["path"] == str(tmp_path / "parity.safetensors")
    assert names["parity"]["details"]["parse_mode"] == "released"


@pytest.mark.slow
def test_segment_real_raster_example(env, tmp_path):
    scene = shared_path("rasters", "cogeo.tif")
    run(["bash", str(EXAMPLES / "segment_real_raster.sh"), str(scene), "the vehicle on the road",
         "", str(tmp_path)], env, tmp_path)  # fmt: skip
    summary = json.loads((tmp_path / "cogeo.summary.json").read_text())
    assert summary["scene"]["width"] == 1024 and summary["options"]["dst_crs"] == "EPSG:4326"
    with rasterio.open(tmp_path / "cogeo.tif") as mask:
        assert mask.crs.to_epsg() == 3857 and mask.shape == (1024, 1024)
    assert gpd.read_file(tmp_path / "cogeo.gpkg").crs.to_epsg() == 4326
    assert (tmp_path / "cogeo.png").is_file()

"""``fiacli segment`` on the command line: options reach the pipeline, bad input is one line."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pytest
from _oracle import random_rgb, read, write_tif
from cli_helpers import one_line

import fiacli.app.pipeline

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def scene(tmp_path):
    return write_tif(tmp_path / "scene.tif", random_rgb(90, 110))


def test_segment_writes_outputs_and_json_summary(run_cli, oracle, scene, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("# one per line\nthe blue thing\n\n")
    out = tmp_path / "o.gpkg"
    r = run_cli("segment", str(scene), "-e", "the red thing", "-e", "the green thing",
                "--expressions", str(queries), "-m", "model.safetensors", "-o", str(out),
                "-o", str(tmp_path / "o.tif"), "--probabilities", str(tmp_path / "p.tif"),
                "--chip", "32", "--overlap", "8", "--blend", "crop", "--batch-size", "2",
                "--device", "cpu", "--precision", "bf16", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["expressions"] == ["the red thing", "the green thing", "the blue thing"]
    assert summary["options"]["blend"] == "crop" and summary["options"]["chip"] == 32
    assert summary["outputs"]["mask"] == str(tmp_path / "o.tif")
    assert oracle.loaded == [("model.safetensors", "cpu", "bf16")]
    assert all(b[0] <= 2 for b in oracle.batches)
    assert read(tmp_path / "o.tif").shape == (3, 90, 110)
    assert set(gpd.read_file(out)["expression"]) == set(summary["expressions"])
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert manifest["model"]["path"] == "model.safetensors"


def test_default_output_is_a_geopackage_named_after_the_scene(run_cli, oracle, scene, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = run_cli("segment", str(scene), "red", "-m", "m.safetensors", "--chip", "64")
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "scene.gpkg").exists() and "wrote scene.gpkg" in r.stdout


def test_interrupt_exits_130_and_leaves_nothing(run_cli, oracle, scene, tmp_path):
    oracle.fail_after = 1
    r = run_cli("segment", str(scene), "red", "-m", "m", "-o", str(tmp_path / "o.tif"),
                "--chip", "32", "--overlap", "8")  # fmt: skip
    assert r.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_without_a_model_the_bundled_demo_model_is_used_and_said_once(
    run_cli, oracle, scene, tmp_path, monkeypatch
):
    import fiacli.app.demo

    monkeypatch.setattr(fiacli.app.demo, "ASSETS", tmp_path)  # a stand-in for the bundled file
    (tmp_path / fiacli.app.demo.DEMO_MODEL_FILE).write_bytes(b"stand-in")
    r = run_cli("segment", str(scene), "red", "-o", str(tmp_path / "o.tif"))
    assert r.exit_code == 0, r.stderr
    assert oracle.loaded == [(str(tmp_path / fiacli.app.demo.DEMO_MODEL_FILE), "auto", "fp32")]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "demo model" in lines[0] and "synthetic" in lines[0]
    assert "fiacli convert" in lines[0] and "fiacli train" in lines[0]


@pytest.mark.slow  # imports torch and the model code (seconds) to read the file's header
def test_model_that_is_not_a_checkpoint(run_cli, scene, tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("these are not weights")
    r = run_cli("segment", str(scene), "red", "-m", str(fake), "-o", str(tmp_path / "o.tif"))
    assert r.exit_code == 1 and "not a fiacli checkpoint" in one_line(r)
    r = run_cli("segment", str(scene), "red", "-m", str(tmp_path / "nope.safetensors"),
                "-o", str(tmp_path / "o.tif"))  # fmt: skip
    assert r.exit_code == 1 and "not found" in one_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "scene.tif"]


BAD = [
    (["missing.tif", "red"], 1, "scene not found"),
    (["{notes}", "red"], 1, "cannot read"),
    (["{scene}", "red", "--bands", "1,2,7"], 1, "asks for band 7"),
    (["{scene}", "red", "--bands", "x"], 2, "--bands"),
    (["{scene}", "  "], 2, "empty"),  # a usage error
    (["{scene}"], 2, "no expression"),
    (["{scene}", "red", "-o", "{tmp}/x.kml"], 2, "unknown output extension"),
    (["{scene}", "red", "-o", "{tmp}/none/x.tif"], 1, "does not exist"),
    (["{scene}", "red", "-o", "{scene}"], 2, "is the input"),  # -f would not help: not "exists"
    (["{scene}", "red", "--overlap", "600"], 2, "--overlap"),
    (["{scene}", "red", "--device", "tpu"], 1, "device"),
    (["{scene}", "red", "--precision", "fp16", "--device", "cpu"], 1, "fp16 needs a CUDA"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD)
def test_bad_input_is_one_clear_line(run_cli, oracle, scene, tmp_path, monkeypatch, args, code,
                                     message):  # fmt: skip
    notes = tmp_path / "notes.tif"
    notes.write_text("hello")
    oracle.loaded = []
    subs = {"{scene}": str(scene), "{notes}": str(notes), "{tmp}": str(tmp_path)}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "o.gpkg")]
    if "--device" in argv:  # the real loader validates the device
        monkeypatch.setattr(fiacli.app.pipeline, "load_predictor", _real_loader)
    r = run_cli("segment", *argv, "-m", "m.safetensors")
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert message in one_line(r)
    assert not (tmp_path / "o.gpkg").exists() and oracle.batches == []


def test_choices_are_checked_by_the_parser(run_cli, scene):
    r = run_cli("segment", str(scene), "red", "-m", "m", "--blend", "max")
    assert r.exit_code == 2 and "'max' is not one of" in r.stderr


_real_loader = fiacli.app.pipeline.load_predictor


def test_read_only_output_folder(run_cli, oracle, scene, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(folder) else
                        real_access(p, mode))  # fmt: skip
    r = run_cli("segment", str(scene), "red", "-m", "m", "-o", str(folder / "o.tif"))
    assert r.exit_code == 1 and "not writable" in one_line(r)
    assert oracle.batches == []


def test_single_band_scene_warns_and_runs(run_cli, oracle, tmp_path):
    grey = write_tif(tmp_path / "grey.tif", np.full((1, 40, 40), 200, np.uint8))
    r = run_cli("segment", str(grey), "red", "-m", "m", "-o", str(tmp_path / "o.tif"),
                "--chip", "32")  # fmt: skip
    assert r.exit_code == 0 and "repeating it as R, G and B" in r.stderr
    assert (read(tmp_path / "o.tif") == 1).all()


def test_help_lists_examples_and_scope(run_cli):
    r = run_cli("segment", "--help")
    assert r.exit_code == 0
    for word in ("--scope", "--blend", "--probabilities", "Examples", "left of the whole scene"):
        assert word in r.stdout

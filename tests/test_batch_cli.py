"""``fiacli segment`` over many scenes on the command line: the CLI rule, table, exit codes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import typer
from _oracle import random_rgb, read, write_tif
from cli_helpers import one_line

from fiacli.app.batch import BATCH_FIELD_NAMES, BatchOptions
from fiacli.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "tiles").mkdir()
    for i, (h, w) in enumerate([(90, 110), (70, 64), (64, 80)]):
        write_tif(tmp_path / "tiles" / f"t{i}.tif", random_rgb(h, w, seed=i))
    return tmp_path


def test_batch_options_are_cli_options_with_the_same_defaults():
    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands["segment"].params}
    assert set(BATCH_FIELD_NAMES) <= set(params)
    defaults = {name: params[name].default for name in BATCH_FIELD_NAMES}
    assert BatchOptions.from_mapping(defaults) == BatchOptions()
    for f in dataclasses.fields(BatchOptions):
        assert params[f.name].default == f.default, f.name


def test_many_scenes_with_globs_a_list_and_a_template(run_cli, oracle, folder):
    listing = folder / "more.txt"
    listing.write_text("tiles/t2.tif\n")
    out = folder / "out"
    r = run_cli("segment", str(folder / "tiles" / "t0.tif"), str(folder / "tiles" / "t[01].tif"),
                "--input-list", str(listing), "-e", "red", "-e", "green", "-m", "m.safetensors",
                "-o", str(out / "{stem}.gpkg"), "--chip", "32", "--overlap", "8")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert oracle.loaded == [("m.safetensors", "auto", "fp32")]  # one model for the run
    assert sorted(oracle.encode_calls) == [("green", False), ("red", False)]  # encoded once
    for i in range(3):
        assert f"t{i}.tif" in r.stdout and (out / f"t{i}.gpkg").exists()
    assert "3 done, 0 skipped, 0 failed" in r.stdout and "done" in r.stdout
    run = json.loads((out / "fiacli-run.json").read_text())
    assert [Path(s["scene"]).name for s in run["scenes"]] == ["t0.tif", "t1.tif", "t2.tif"]
    again = run_cli("segment", str(folder / "tiles" / "t*.tif"), "-e", "red", "-e", "green",
                    "-m", "m.safetensors", "-o", str(out / "{stem}.gpkg"), "--chip", "32",
                    "--overlap", "8")  # fmt: skip
    assert again.exit_code == 0 and "0 done, 3 skipped" in again.stdout
    assert len(oracle.loaded) == 1  # nothing left to do: the model is not even loaded


def test_without_e_the_first_positional_is_the_scene_and_the_rest_expressions(run_cli, oracle,
                                                                             folder):  # fmt: skip
    scene = folder / "tiles" / "t0.tif"
    r = run_cli("segment", str(scene), "red", "green", "-m", "m", "-o", str(folder / "o.tif"),
                "--chip", "32", "--overlap", "8")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert read(folder / "o.tif").shape == (2, 90, 110) and "'green':" in r.stdout  # one scene
    # a glob first: many scenes, and the rest are still expressions
    r = run_cli("segment", str(folder / "tiles" / "*.tif"), "red", "-m", "m", "-o",
                str(folder / "many" / "{stem}.tif"), "--chip", "32", "--overlap", "8")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (folder / "many").glob("*.tif")) == ["t0.tif", "t1.tif", "t2.tif"]


def test_without_o_each_scene_gets_its_stem_and_a_list_needs_no_positional_scene(
    run_cli, oracle, folder, monkeypatch
):
    monkeypatch.chdir(folder)
    small = ("-m", "m", "--chip", "32", "--overlap", "8")
    r = run_cli("segment", "tiles/t0.tif", "tiles/t1.tif", "-e", "red", *small)
    assert r.exit_code == 0, r.stderr
    assert (folder / "t0.gpkg").exists() and (folder / "t1.gpkg").exists()
    r = run_cli("segment", "tiles/*.tif", "red", "--mosaic", *small)
    assert r.exit_code == 0, r.stderr
    assert (folder / "mosaic.gpkg").exists() and (folder / "mosaic.vrt").exists()
    (folder / "list.txt").write_text("tiles/t2.tif\n")
    r = run_cli("segment", "--input-list", "list.txt", "-e", "red", *small, "-o", "out/")
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in (folder / "out").glob("*.gpkg")] == ["t2.gpkg"]
    # without -e the positional word is a scene: say so, rather than only "no expression"
    r = run_cli("segment", "--input-list", "list.txt", "red", *small, "-o", "out2/")
    assert r.exit_code == 2
    assert "'red' is read as a scene" in r.stderr and "-e" in r.stderr
    assert not (folder / "out2").exists()


def test_folder_output_with_formats_and_json(run_cli, oracle, folder):
    out = folder / "out"
    r = run_cli("segment", str(folder / "tiles" / "t*.tif"), "-e", "red", "-m", "m", "-o",
                f"{out}/", "--format", "gpkg,tif", "--chip", "32", "--overlap", "8",
                "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["summary"]["done"] == 3 and run["world_size"] == 1
    assert all((out / f"t{i}{s}").exists() for i in range(3) for s in (".gpkg", ".tif"))


def test_an_unreadable_scene_fails_its_row_and_the_run_exits_1_naming_it(run_cli, oracle, folder):
    (folder / "tiles" / "bad.tif").write_bytes(b"nope")
    r = run_cli("segment", str(folder / "tiles" / "*.tif"), "-e", "red", "-m", "m", "-o",
                str(folder / "out" / "{stem}.gpkg"), "--chip", "32", "--overlap", "8")  # fmt: skip
    assert r.exit_code == 1
    line = one_line(r)
    assert "1 of 4 scene(s) failed" in line and "bad.tif" in line
    assert "cannot read" in r.stdout  # its row says why
    assert all((folder / "out" / f"t{i}.gpkg").exists() for i in range(3))


def test_a_template_clash_is_a_usage_error_before_the_model_loads(run_cli, oracle, folder):
    r = run_cli("segment", str(folder / "tiles" / "*.tif"), "-e", "red", "-m", "m", "-o",
                str(folder / "all.gpkg"))  # fmt: skip
    assert r.exit_code == 2 and "would be written for both" in one_line(r)
    assert oracle.loaded == []


def test_an_unwritable_output_folder_is_one_line_before_the_model_loads(run_cli, oracle, folder):
    r = run_cli("segment", str(folder / "tiles" / "*.tif"), "-e", "red", "-m", "m", "-o",
                "/proc/self/{stem}.gpkg")  # fmt: skip
    assert r.exit_code == 1 and "not writable" in one_line(r)
    assert oracle.loaded == []


def test_an_aoi_over_many_scenes_runs_in_each_one_it_overlaps(run_cli, oracle, folder):
    tiles = str(folder / "tiles" / "*.tif")
    out = folder / "out"
    # the tiles share one UTM origin (500000, 4100000) and 0.5 m pixels: this box is in all
    r = run_cli("segment", tiles, "-e", "red", "-m", "m", "--bbox",
                "500005,4099975,500025,4099995", "-o", str(out / "{stem}.gpkg"))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    for i in range(3):
        found = gpd.read_file(out / f"t{i}.gpkg")
        assert len(found) and set(found["aoi_id"]) == {"bbox"}
        assert found.total_bounds[0] >= 500005 - 1e-6 and found.total_bounds[2] <= 500025 + 1e-6
    # a box over none of them (its coordinates swapped, say) is an error, as with one scene,
    # before the model loads
    oracle.loaded.clear()
    r = run_cli("segment", tiles, "-e", "red", "-m", "m", "--bbox", "0,0,10,10",
                "-o", str(folder / "none" / "{stem}.gpkg"))  # fmt: skip
    assert r.exit_code == 1 and oracle.loaded == []
    assert r.stderr.splitlines()[-1] == "error: the --bbox overlaps none of the 3 scenes"
    assert not list((folder / "none").glob("t*"))


def test_an_output_folder_with_a_dot_in_its_name(run_cli, oracle, folder):
    """-o out.v2/ is a folder (the "/" says so), even before it exists."""
    r = run_cli("segment", str(folder / "tiles" / "*.tif"), "-e", "red", "-m", "m",
                "-o", str(folder / "out.v2") + "/", "--format", "gpkg")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (folder / "out.v2").glob("*.gpkg")) == [
        "t0.gpkg", "t1.gpkg", "t2.gpkg"]  # fmt: skip


def test_with_expression_field_every_positional_is_a_scene(run_cli, oracle, folder):
    """The features bring the expressions, so there is no -e: scenes the shell expanded from a
    glob must not be read as expressions (they were: only the first scene ran)."""
    aoi = folder / "aoi.gpkg"
    gpd.GeoDataFrame({"query": ["red"]}, geometry=[shapely.box(500005, 4099975, 500025, 4099995)],
                     crs="EPSG:32633").to_file(aoi)  # fmt: skip
    tiles = sorted(str(p) for p in (folder / "tiles").glob("*.tif"))
    out = folder / "out"
    r = run_cli("segment", *tiles, "--aoi", str(aoi), "--expression-field", "query", "-m", "m",
                "-o", str(out / "{stem}.gpkg"))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["t0.gpkg", "t1.gpkg", "t2.gpkg"]
    man = json.loads((out / "t1.manifest.json").read_text())
    assert man["expressions"] == ["expression from field 'query'"]  # no scene path among them


def test_demo_with_expression_field_adds_no_demo_expression_over_many_outputs(run_cli, oracle,
                                                                             tmp_path):  # fmt: skip
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"query": ["red"]}, geometry=[shapely.box(448100, 5411800, 448140, 5411840)],
                     crs="EPSG:32633").to_file(aoi)  # fmt: skip
    # a template: the batch path
    r = run_cli("segment", "--demo", "--aoi", str(aoi), "--expression-field", "query",
                "-o", str(tmp_path / "many" / "{stem}.gpkg"))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    man = json.loads((tmp_path / "many" / "demo_scene.manifest.json").read_text())
    assert man["expressions"] == ["expression from field 'query'"]


# --------------------------------------------------------------------------------------------
# torchrun, with a real (random-weight, 64 px) FIANet


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() or shutil.which("python") is None:
        pytest.skip("torchrun is not installed")
    import torch

    from fiacli.models import create_model, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    torch.manual_seed(0)
    model = tmp_path / "tiny64.safetensors"
    save_checkpoint(model, create_model("fianet-tiny", image_size=64),
                    {"parse": ParseSettings().to_dict()})  # fmt: skip
    scenes = [write_tif(tmp_path / f"s{i}.tif", random_rgb(120 + 30 * i, 100, seed=i))
              for i in range(3)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "fiacli", "segment", *map(str, scenes), "-e", "the red roof", "-m", str(model),
            "--device", "cpu", "--split-above", "0.015"]  # fmt: skip
    one = subprocess.run([sys.executable, *base, "-o", str(tmp_path / "one" / "{stem}.tif")],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", *base,
                          "-o", str(tmp_path / "two" / "{stem}.tif")],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    run = json.loads((tmp_path / "two" / "fiacli-run.json").read_text())
    assert run["world_size"] == 2 and run["scenes"][2]["parts"] == 2  # 180x100 > 0.015 Mpx
    for s in scenes:
        assert np.array_equal(read(tmp_path / "one" / f"{s.stem}.tif"),
                              read(tmp_path / "two" / f"{s.stem}.tif"))  # fmt: skip

"""Areas of interest over many scenes (fiacli.app.batch with fiacli.app.areas), oracle model.

Three scenes side by side on one UTM grid: A, then B just east of it, then C far away. The AOI
file holds a feature inside A, one inside B, one across the A|B edge and one over no scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from _oracle import UTM_TRANSFORM, Oracle, read, write_tif
from affine import Affine

from fiacli.app.areas import AreaOptions, segment_areas
from fiacli.app.batch import segment_many
from fiacli.core.errors import FiacliError

T = UTM_TRANSFORM  # 0.5 m pixels from (500000, 4100000), EPSG:32633
H, W = 120, 200  # each scene


@dataclass
class Model:
    predictor: Any = field(default_factory=Oracle)
    model_info: dict[str, Any] = field(default_factory=lambda: {"path": "oracle", "name": None})


def scene_at(path, col0: int, squares: list[tuple[int, int]]):
    """A black scene whose first column is column ``col0`` of the shared grid, with 16-px red
    squares at the given (row, column) of that grid."""
    rgb = np.zeros((3, H, W), np.uint8)
    for r, c in squares:
        rgb[0, r : r + 16, c - col0 : c - col0 + 16] = 255
    return write_tif(path, rgb, transform=T @ Affine.translation(col0, 0))


def box(c0, r0, c1, r1):
    """A box in columns/rows of the shared grid, in map coordinates."""
    return shapely.box(T.c + c0 * T.a, T.f + r1 * T.e, T.c + c1 * T.a, T.f + r0 * T.e)


@pytest.fixture
def world(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    scenes = [
        scene_at(inp / "a.tif", 0, [(40, 30), (50, 180)]),  # the second: under the A|B feature
        scene_at(inp / "b.tif", 200, [(40, 300), (50, 210)]),
        scene_at(inp / "c.tif", 5000, [(40, 5050)]),  # no feature near it
    ]
    features = gpd.GeoDataFrame(
        {"name": ["in A", "in B", "across", "nowhere"]},
        geometry=[box(10, 20, 90, 100), box(260, 20, 360, 100), box(150, 30, 250, 90),
                  box(2000, 0, 2100, 50)],
        crs="EPSG:32633",
    )  # fmt: skip
    aoi = tmp_path / "aoi.geojson"
    features.to_file(aoi, driver="GeoJSON")
    return scenes, aoi, tmp_path


def run(scenes, aoi, out, model=None, **kw):
    model = model or Model()
    areas = AreaOptions(aoi=aoi, keep_fields=("name",), **kw.pop("areas", {}))
    return segment_many(scenes, "red", [out / "{stem}.gpkg", out / "{stem}.tif"], model=model,
                        model_info=Model().model_info, areas=areas, chip=64, overlap=16,
                        **kw)  # fmt: skip


def test_each_scene_runs_the_areas_over_it_as_a_run_of_its_own_would(world, capsys):
    scenes, aoi, tmp = world
    out = tmp / "out"
    out.mkdir()
    result = run(scenes, aoi, out)
    rows = {r["scene"]: r for r in result.rows}
    a, b, c = (str(s) for s in scenes)
    assert rows[a]["status"] == rows[b]["status"] == "done"
    assert rows[c]["status"] == "skipped" and "no area of interest" in rows[c]["note"]
    assert not list(out.glob("c.*"))  # a scene no AOI overlaps writes nothing
    # only the features over each scene, each cut to it
    for scene, names in ((a, {"in A", "across"}), (b, {"in B", "across"})):
        found = gpd.read_file(out / f"{scene.split('/')[-1][:-4]}.gpkg")
        assert set(found["name"]) == names
    # a one-scene run with the same file gives the same polygons and mask (it warns about the
    # features outside the scene; the run over many scenes does not)
    capsys.readouterr()
    alone = tmp / "alone"
    alone.mkdir()
    segment_areas(scenes[0], "red", [alone / "a.gpkg", alone / "a.tif"],
                  areas=AreaOptions(aoi=aoi, keep_fields=("name",)), predictor=Oracle(),
                  chip=64, overlap=16)  # fmt: skip
    assert "outside the scene" in capsys.readouterr().err
    assert np.array_equal(read(alone / "a.tif"), read(out / "a.tif"))
    one, many = gpd.read_file(alone / "a.gpkg"), gpd.read_file(out / "a.gpkg")
    assert one.drop(columns="geometry").equals(many.drop(columns="geometry"))
    assert all(g1.equals(g2) for g1, g2 in zip(one.geometry, many.geometry, strict=True))
    man = json.loads((out / "fiacli-run.json").read_text())
    assert man["areas"]["aoi"] == str(aoi) and man["summary"]["skipped"] == 1
    assert [r["id"] for r in json.loads((out / "b.manifest.json").read_text())["areas"]] == [1, 2]


def test_a_second_run_skips_finished_scenes_and_new_areas_redo_them(world):
    scenes, aoi, tmp = world
    out = tmp / "out"
    out.mkdir()
    run(scenes, aoi, out)
    loads = []

    def load():
        loads.append(1)
        return Model()

    again = run(scenes, aoi, out, model=load)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3 and loads == []
    other = run(scenes, aoi, out, model=load, overwrite=True,
                areas={"aoi_where": "name = 'in B'"})  # fmt: skip
    assert [r["status"] for r in other.rows] == ["skipped", "done", "skipped"]
    assert set(gpd.read_file(out / "b.gpkg")["name"]) == {"in B"}


def test_a_bad_aoi_file_fails_the_run_before_any_scene_or_the_model(world):
    scenes, aoi, tmp = world
    loads = []

    def load():
        loads.append(1)
        return Model()

    with pytest.raises(FiacliError, match="selects no feature"):
        run(scenes, aoi, tmp, model=load, areas={"aoi_where": "name = 'no such'"})
    with pytest.raises(FiacliError, match="no such attribute"):
        run(scenes, aoi, tmp, model=load, areas={"expression_field": "query"})
    assert loads == [] and not list(tmp.glob("*.gpkg"))


def test_each_feature_brings_its_own_expression_over_many_scenes(world):
    scenes, aoi, tmp = world
    frame = gpd.read_file(aoi)
    frame["query"] = ["red", "green", "red", "red"]  # the oracle finds no green
    own = tmp / "own.gpkg"
    frame.to_file(own)
    out = tmp / "out"
    out.mkdir()
    result = segment_many(scenes, [], [out / "{stem}.gpkg"], model=Model(),
                          areas=AreaOptions(aoi=own, expression_field="query",
                                            keep_fields=("name",)),
                          chip=64, overlap=16)  # fmt: skip
    assert [r["status"] for r in result.rows] == ["done", "done", "skipped"]
    assert set(gpd.read_file(out / "b.gpkg")["name"]) == {"across"}  # "in B" asked for green


def test_finished_outputs_are_those_of_the_same_areas(world):
    """A rerun skips a scene only when its manifest was written for the same areas: not after a
    whole-scene run, nor after the AOI file was edited (then, as for any changed option, the
    existing outputs need -f)."""
    scenes, aoi, tmp = world
    out = tmp / "out"
    out.mkdir()
    run(scenes, aoi, out)
    whole = segment_many(scenes, "red", [out / "{stem}.gpkg", out / "{stem}.tif"],
                         model=Model(), model_info=Model().model_info, chip=64,
                         overlap=16)  # fmt: skip
    assert [r["status"] for r in whole.rows] == ["failed", "failed", "done"]
    assert all("already exists" in r["error"] for r in whole.rows[:2])
    edited = gpd.read_file(aoi)
    edited.loc[edited["name"] == "in A", "geometry"] = box(30, 20, 90, 100)  # same path
    edited.to_file(aoi, driver="GeoJSON")
    again = run(scenes, aoi, out)
    assert [r["status"] for r in again.rows] == ["failed", "skipped", "skipped"]  # b: unchanged
    assert "a.tif already exists" in again.rows[0]["error"]
    redone = run(scenes, aoi, out, overwrite=True)
    assert [r["status"] for r in redone.rows] == ["done", "done", "skipped"]
    found = gpd.read_file(out / "a.gpkg")
    assert found[found["name"] == "in A"].total_bounds[0] >= T.c + 30 * T.a


def test_an_interrupted_area_run_runs_again_without_f(world, monkeypatch):
    """Interrupted between the renames of its outputs, a scene's AOI run has written its
    manifest, so running it again replaces what it left (as a whole-scene run does)."""
    import os

    import fiacli.core.io as io_module

    scenes, aoi, tmp = world
    out = tmp / "out"
    out.mkdir()
    real, renamed = os.replace, []

    def replace(src, dst):
        final = os.path.dirname(os.fspath(dst)) == str(out) and not dst.name.startswith(".")
        if final:
            renamed.append(dst)
            if len(renamed) == 2:
                raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(io_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run(scenes[:1], aoi, out)
    monkeypatch.undo()
    assert (out / "a.manifest.json").exists()
    assert [r["status"] for r in run(scenes[:1], aoi, out).rows] == ["done"]


def test_a_scene_no_area_overlaps_any_more_keeps_its_old_outputs_and_says_so(world):
    scenes, aoi, tmp = world
    out = tmp / "out"
    out.mkdir()
    run(scenes, aoi, out)
    before = (out / "a.gpkg").read_bytes()
    again = run(scenes, aoi, out, overwrite=True, areas={"aoi_where": "name = 'in B'"})
    row = again.rows[0]
    assert row["status"] == "skipped" and row["manifest"] is None
    assert row["note"].endswith("the outputs of an earlier run are left as they were")
    assert (out / "a.gpkg").read_bytes() == before  # nothing of the user's is removed


def test_areas_that_overlap_no_scene_are_an_error(world):
    scenes, aoi, tmp = world
    with pytest.raises(FiacliError, match=r"aoi\.geojson\) overlap none of the 3 scenes"):
        run(scenes, aoi, tmp, areas={"aoi_where": "name = 'nowhere'"})


def test_the_aois_own_warnings_are_said_once_and_kept_in_every_manifest(world, capsys):
    scenes, _, tmp = world
    bow = shapely.Polygon([(500010, 4099990), (500030, 4099970), (500030, 4099990),
                           (500010, 4099970)])  # fmt: skip  # self-intersecting, over scene A
    frame = gpd.GeoDataFrame(geometry=[bow, box(260, 20, 360, 100)], crs="EPSG:32633")
    out = tmp / "out"
    out.mkdir()
    segment_many(scenes, "red", [out / "{stem}.gpkg"], model=Model(), aoi=frame, chip=64,
                 overlap=16)  # fmt: skip
    err = capsys.readouterr().err
    note = "1 invalid AOI geometry repaired with make_valid"
    assert err.count(note) == 1 and "outside the scene" not in err
    for stem in ("a", "b"):
        assert note in json.loads((out / f"{stem}.manifest.json").read_text())["warnings"]


def test_the_python_api_takes_area_options_as_keywords(world):
    from fiacli.app.api import Segmenter

    scenes, aoi, tmp = world
    frame = gpd.read_file(aoi)
    frame["query"] = "red"
    own = tmp / "own.gpkg"
    frame.to_file(own)
    result = Segmenter(Oracle()).segment_many([str(tmp / "in" / "*.tif")], [],
                                              tmp / "out" / "{stem}.gpkg", aoi=own,
                                              expression_field="query", chip=64,
                                              overlap=16)  # fmt: skip
    assert [r["status"] for r in result.rows] == ["done", "done", "skipped"]
    assert result.payload["areas"]["expression_field"] == "query"

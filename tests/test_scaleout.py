"""Scale-out (fiacli.app.scaleout): bands on the global chip grid, balance, and split scenes and
lists of scenes on 2 gloo processes giving what one process gives."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from _oracle import Oracle, random_rgb, read, write_tif

from fiacli.app.batch import BatchOptions, segment_many
from fiacli.app.pipeline import segment_raster
from fiacli.app.scaleout import grid_offsets, plan_units, split_bands
from fiacli.app.segment_options import SegmentOptions
from fiacli.core.signals import interrupt_exit_code

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@dataclass
class Model:
    predictor: Any = field(default_factory=lambda: Oracle(radius=2))
    model_info: dict[str, Any] = field(default_factory=lambda: {"path": "oracle", "name": None})


# --------------------------------------------------------------------------------------------
# the plan


@pytest.mark.parametrize(
    ("height", "chip", "overlap", "parts", "context"),
    [(150, 48, 16, 3, 0), (150, 48, 30, 2, 4), (1000, 64, 8, 7, 0), (97, 32, 24, 4, 2),
     (481, 480, 96, 2, 0), (2000, 480, 96, 8, 6), (64, 64, 0, 2, 0), (130, 16, 15, 5, 3)],
)  # fmt: skip
def test_bands_own_every_row_once_and_read_chips_of_the_global_grid(height, chip, overlap,
                                                                   parts, context):  # fmt: skip
    bands = split_bands(height, chip, overlap, parts, context)  # asserts the grid itself
    ys = grid_offsets(height, chip, overlap)
    assert len(bands) == min(parts, len(ys))
    assert bands[0].own[0] == 0 and bands[-1].own[1] == height
    for a, b in zip(bands, bands[1:], strict=False):
        assert a.own[1] == b.own[0]  # a partition of the rows
        assert a.chip_rows[1] + 1 == b.chip_rows[0]
    for band in bands:
        r0, r1 = band.read
        assert r0 <= max(0, band.own[0] - context) and r1 >= min(height, band.own[1] + context)
        assert r0 in ys  # starts on a chip row of the global grid


def test_plan_gives_bands_one_per_rank_then_scenes_largest_first_to_the_least_loaded():
    sizes = [(0, 100, 100), (1, 1000, 1000), (2, 300, 300), (3, 600, 500), (4, 50, 50)]
    units = plan_units(sizes, 2, 48, 16, split=lambda job, h, w: job == 1)
    bands = [u for u in units if u.band is not None]
    assert sorted(u.rank for u in bands) == [0, 1] and {u.job for u in bands} == {1}
    whole = [u for u in units if u.band is None]
    assert [u.job for u in whole] == [3, 2, 0, 4]  # largest first
    first = whole[0].rank  # each to the least-loaded rank: the rest to the other one
    assert [u.rank for u in whole] == [first, 1 - first, 1 - first, 1 - first]


def test_unequal_scenes_are_balanced_by_pixels():
    rng = np.random.default_rng(0)
    sizes = [(i, int(h), int(w)) for i, (h, w) in enumerate(rng.integers(100, 3000, (40, 2)))]
    units = plan_units(sizes, 4, 480, 96, split=lambda *a: False)
    load = [sum(u.cost for u in units if u.rank == r) for r in range(4)]
    assert max(load) / (sum(load) / 4) < 1.05


# --------------------------------------------------------------------------------------------
# split scenes in one process: equal to the unsplit run


def polygons(path: Path) -> list[tuple]:
    f = gpd.read_file(path)
    rows = zip(f.expression, f.geometry, f.pixels, f.mean_prob, f.area_m2, strict=True)
    return sorted(
        (e, shapely.normalize(g).wkb, int(p), round(float(m), 4), round(float(a), 6))
        for e, g, p, m, a in rows
    )


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("x.tif", "p.tif"):
        with rasterio.open(a / name) as da, rasterio.open(b / name) as db:
            assert np.array_equal(da.read(), db.read()), name
            assert np.array_equal(da.read_masks(), db.read_masks()), name
            assert da.transform == db.transform and da.crs == db.crs
            assert list(da.descriptions) == list(db.descriptions)
    pa, pb = polygons(a / "x.gpkg"), polygons(b / "x.gpkg")
    assert len(pa) > 10 and pa == pb


def scene_with_holes(path: Path, h: int, w: int, seed: int = 1) -> Path:
    rgb = random_rgb(h, w, seed=seed)
    rgb[:, 40:52, 10:70] = 0  # nodata across a seam
    return write_tif(path, rgb, nodata=0)


@pytest.mark.parametrize(
    ("blend", "overlap", "open_px", "parts"),
    [("cosine", 16, 0, 3), ("cosine", 30, 2, 2), ("crop", 16, 1, 4), ("none", 20, 0, 3)],
)
def test_a_split_scene_equals_the_whole_scene(tmp_path, blend, overlap, open_px, parts):
    scene = scene_with_holes(tmp_path / "s.tif", 230, 150)
    kw = dict(chip=48, overlap=overlap, blend=blend, open_px=open_px)
    (tmp_path / "one").mkdir()
    one = tmp_path / "one"
    segment_raster(scene, ["red", "blue"], [one / "x.tif", one / "x.gpkg"],
                   predictor=Oracle(radius=2), probabilities=one / "p.tif", **kw)  # fmt: skip
    out = tmp_path / "split"
    out.mkdir()
    result = segment_many([scene], ["red", "blue"], [out / "x.tif", out / "x.gpkg"], model=Model(),
                          probabilities=out / "p.tif", batch=BatchOptions(split_scene=True),
                          split_parts=parts, **kw)  # fmt: skip
    row = result.rows[0]
    assert row["status"] == "done" and row["parts"] == parts, row
    assert_same_outputs(tmp_path / "one", out)
    man = json.loads((out / "x.manifest.json").read_text())
    alone = json.loads((tmp_path / "one" / "x.manifest.json").read_text())
    assert man["per_expression"] == alone["per_expression"]
    assert man["scene"]["valid_pixels"] == alone["scene"]["valid_pixels"]
    assert man["options"] == alone["options"] and man["split"]["parts"] == parts
    assert not list(out.glob(".*"))  # parts and job folder removed


def test_a_split_scene_with_cog_outputs_min_area_reprojection_and_preview(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(200, 120, seed=4))
    kw = dict(chip=48, overlap=16, cog=True, min_area=2.0, dst_crs="EPSG:4326")
    (tmp_path / "one").mkdir()
    one = tmp_path / "one"
    segment_raster(scene, ["red"], [one / "x.tif", one / "x.gpkg"],
                   predictor=Oracle(radius=2), probabilities=one / "p.tif", **kw)  # fmt: skip
    out = tmp_path / "split"
    out.mkdir()
    segment_many([scene], ["red"], [out / "x.tif", out / "x.gpkg"], model=Model(),
                 probabilities=out / "p.tif", batch=BatchOptions(split_scene=True), split_parts=3,
                 preview=out / "x.png", **kw)  # fmt: skip
    assert_same_outputs(tmp_path / "one", out)
    assert gpd.read_file(out / "x.gpkg").crs.to_epsg() == 4326
    assert (out / "x.png").stat().st_size > 1000
    again = segment_many([scene], ["red"], [out / "x.tif", out / "x.gpkg"], model=Model(),
                         probabilities=out / "p.tif", batch=BatchOptions(split_scene=True),
                         split_parts=3, preview=out / "x.png", threshold=0.4, **kw)  # fmt: skip
    assert "already exists" in again.rows[0]["error"]  # refused before the parts run
    with rasterio.open(out / "x.tif") as ds:
        assert ds.profile.get("tiled") and ds.overviews(1) == []  # small: COG without overviews


@pytest.mark.parametrize("case", ["uint16", "resolution", "one band", "simplify 0.7",
                                  "simplify 3"])  # fmt: skip
def test_stretched_resampled_or_grey_scenes_split_exactly_too(tmp_path, case):
    rgb = random_rgb(230, 150, seed=2)
    data, kw = rgb, {"chip": 48, "overlap": 16}
    if case.startswith("simplify"):
        # Douglas-Peucker depends on where a ring starts, and a polygon merged across band
        # seams starts elsewhere than one merged across windows only: both must simplify alike
        kw["simplify"] = float(case.split()[1])
    elif case == "uint16":  # stretched with the statistics of the whole scene
        data = rgb.astype(np.uint16) * 40 + 1000
        data[:, 100:110, 20:60] = 0
        kw["bands"] = "3,2,1"
    elif case == "resolution":  # resampled on the fly
        kw["resolution"] = 0.7
    elif case == "one band":
        data = rgb[:1]
    scene = write_tif(tmp_path / "s.tif", data, nodata=0 if case == "uint16" else None)
    one = tmp_path / "one"
    one.mkdir()
    segment_raster(scene, ["red", "blue"], [one / "x.tif", one / "x.gpkg"],
                   predictor=Oracle(radius=2), probabilities=one / "p.tif", **kw)  # fmt: skip
    out = tmp_path / "split"
    out.mkdir()
    result = segment_many([scene], ["red", "blue"], [out / "x.tif", out / "x.gpkg"], model=Model(),
                          probabilities=out / "p.tif", batch=BatchOptions(split_scene=True),
                          split_parts=3, **kw)  # fmt: skip
    assert result.rows[0]["status"] == "done" and result.rows[0]["parts"] == 3, result.rows
    assert_same_outputs(one, out)
    man = json.loads((out / "x.manifest.json").read_text())
    alone = json.loads((one / "x.manifest.json").read_text())
    assert man["scene"] == alone["scene"]  # size, grid, bands, stretch


@pytest.mark.parametrize("parts", [2, 3])
def test_a_split_scene_in_scene_scope_equals_the_whole_scene(tmp_path, parts):
    """Every band is cut by the whole scene's coarse pass ("on the left" of the scene, not of
    the band), so the split run's outputs are the unsplit run's."""
    scene = scene_with_holes(tmp_path / "s.tif", 150, 230)
    kw = dict(chip=48, overlap=16, scope="scene")
    texts = ["red on the left", "blue on the left"]
    one = tmp_path / "one"
    one.mkdir()
    alone = segment_raster(scene, texts, [one / "x.tif", one / "x.gpkg"],
                           predictor=Oracle(radius=2), probabilities=one / "p.tif",
                           **kw)  # fmt: skip
    assert 0 < alone.chips["predicted"] < alone.chips["total"]  # the regions cut the run
    out = tmp_path / "split"
    out.mkdir()
    result = segment_many([scene], texts, [out / "x.tif", out / "x.gpkg"], model=Model(),
                          probabilities=out / "p.tif", batch=BatchOptions(split_scene=True),
                          split_parts=parts, **kw)  # fmt: skip
    row = result.rows[0]
    assert row["status"] == "done" and row["parts"] == parts, row
    assert_same_outputs(one, out)
    man = json.loads((out / "x.manifest.json").read_text())
    assert man["options"] == json.loads((one / "x.manifest.json").read_text())["options"]
    assert man["options"]["effective_scope"] == "scene"
    with rasterio.open(one / "x.tif") as ds:  # the left half of the scene, not of each band
        red = ds.read(1)
    assert (red[:, 140:] == 1).sum() == 0 and (red[:, :50] == 1).sum() > 100


def test_a_resumed_split_scene_in_scene_scope_reuses_its_parts_without_a_coarse_pass(
    tmp_path, monkeypatch
):
    """A killed run (here: its cleanup skipped) leaves every part; the next run of the job
    reuses them and makes no coarse pass, and its outputs are still the unsplit run's. A part
    that vanishes after that decision fails its band with a reason, not a chip-scope part."""
    import fiacli.app.batch as batch
    import fiacli.app.pipeline as pipeline

    scene = scene_with_holes(tmp_path / "s.tif", 150, 230)
    kw = dict(chip=48, overlap=16, scope="scene")
    texts = ["red on the left"]
    one = tmp_path / "one"
    one.mkdir()
    segment_raster(scene, texts, [one / "x.tif", one / "x.gpkg"], predictor=Oracle(radius=2),
                   probabilities=one / "p.tif", **kw)  # fmt: skip
    out = tmp_path / "split"
    out.mkdir()
    outputs = [out / "x.tif", out / "x.gpkg"]
    run = dict(model=Model(), probabilities=out / "p.tif", batch=BatchOptions(split_scene=True),
               split_parts=3, **kw)  # fmt: skip
    monkeypatch.setattr(batch, "remove_tree", lambda path: None)  # as if SIGKILLed at the end
    assert segment_many([scene], texts, outputs, **run).rows[0]["status"] == "done"
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    passes = []
    real = pipeline.scene_regions
    monkeypatch.setattr(
        pipeline, "scene_regions", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    result = segment_many([scene], texts, outputs, **run)
    assert result.rows[0]["status"] == "done", result.rows
    assert passes == []  # every part was reused
    assert_same_outputs(one, out)

    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    real_reusable = batch.reusable_part
    folder = next(out.glob(".fiacli-job-*")) / "00000"

    def vanishing(*a, **k):  # reusable when the run decides, gone when the band runs
        found = real_reusable(*a, **k)
        if a[1].index == 1:
            (folder / "part-001.json").unlink(missing_ok=True)
        return found

    monkeypatch.setattr(batch, "reusable_part", vanishing)
    result = segment_many([scene], texts, outputs, **run)
    assert result.rows[0]["status"] == "failed"
    assert "part 1 of" in result.rows[0]["error"] and "run the job again" in result.rows[0]["error"]
    assert passes == [] and not (out / "x.tif").exists()


def test_a_coarse_pass_given_with_chip_scope_is_refused(tmp_path):
    from fiacli.app.pipeline import SceneRegion, scene_regions
    from fiacli.core.errors import UsageError

    scene = write_tif(tmp_path / "s.tif", random_rgb(120, 90, seed=2))
    assert scene_regions(scene, ["red"], SegmentOptions(chip=48), predictor=Oracle()) is None
    region = SceneRegion(np.ones((4, 3), bool), 120, 90)
    with pytest.raises(UsageError, match="scope='scene'"):
        segment_raster(scene, "red", tmp_path / "x.tif", predictor=Oracle(), chip=48,
                       regions=[region])  # fmt: skip
    assert not list(tmp_path.glob("x*"))


# --------------------------------------------------------------------------------------------
# two gloo processes


def _worker(rank: int, world: int, init: str, task: dict[str, Any], report: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      FIACLI_DIST_INIT=init, FIACLI_DIST_CHECK_TIMEOUT="30")  # fmt: skip
    path = Path(report) / f"rank-{rank}.json"
    code = 0
    try:
        oracle = Oracle(radius=2)
        if task.get("slow"):
            oracle = Slow(radius=2, started=str(Path(report) / f"started-{rank}"))
        scenes = task["scenes"][rank] if task.get("per_rank_scenes") else task["scenes"]
        if task.get("record_coarse"):  # a file per coarse pass: which rank made it, for what
            import fiacli.app.pipeline as pipeline

            real = pipeline.scene_regions

            def recorded(src, *a, **k):
                (Path(report) / f"coarse-{Path(src).stem}-rank{rank}").touch()
                return real(src, *a, **k)

            pipeline.scene_regions = recorded
        result = segment_many(scenes, task["texts"], task["outputs"],
                              model=Model(oracle), batch=BatchOptions(**task.get("batch", {})),
                              **task["options"])  # fmt: skip
        answer = ["ok", [r["status"] for r in result.rows], result.to_dict()]
    except KeyboardInterrupt as exc:  # the exit code the command line gives it: 143 for SIGTERM
        answer, code = ["interrupted", None, None], interrupt_exit_code(exc)
    except Exception as exc:
        answer, code = ["error", f"{type(exc).__name__}: {exc}", traceback.format_exc()], 1
    path.write_text(json.dumps(answer, default=str))
    os._exit(code)


@dataclass
class Slow(Oracle):
    """An oracle that says when it starts predicting (a file), then takes its time."""

    started: str = ""

    def predict(self, chips, encoded):
        Path(self.started).touch()
        time.sleep(0.1)
        return super().predict(chips, encoded)


def run_ranks(tmp_path: Path, task: dict[str, Any], world: int = 2, timeout: float = 120):
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    report = tmp_path / "report"
    report.mkdir(exist_ok=True)
    args = [(r, world, init, task, str(report)) for r in range(world)]
    procs = [ctx.Process(target=_worker, args=a) for a in args]
    for p in procs:
        p.start()
    if task.get("slow"):  # as torchrun stops a job: SIGTERM to every rank, mid-work
        deadline = time.monotonic() + timeout
        while not all((report / f"started-{r}").exists() for r in range(world)):
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.05)
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    answers = {}
    for r in range(world):
        with contextlib.suppress(FileNotFoundError):
            answers[r] = json.loads((report / f"rank-{r}.json").read_text())
    return [p.exitcode for p in procs], answers


def test_two_ranks_give_what_one_process_gives_for_a_split_scene_and_a_list(tmp_path):
    big = scene_with_holes(tmp_path / "big.tif", 260, 170)
    small = [write_tif(tmp_path / f"s{i}.tif", random_rgb(60 + 20 * i, 90, seed=10 + i))
             for i in range(3)]  # fmt: skip
    texts = ["red", "green"]
    options = dict(chip=48, overlap=16, probabilities="{dir}/{stem}-p.tif")
    results = {}
    for name, world in (("one", 1), ("two", 2)):
        out = tmp_path / name
        out.mkdir()
        opts = {**options, "probabilities": str(out / "{stem}-p.tif")}
        task = {"scenes": [str(big), *map(str, small)], "texts": texts,
                "outputs": [str(out / "{stem}.tif"), str(out / "{stem}.gpkg")],
                "options": opts, "batch": {"split_above": 0.04}}  # fmt: skip
        if world == 1:
            result = segment_many(task["scenes"], texts, task["outputs"], model=Model(),
                                  batch=BatchOptions(split_above=0.04), **opts)  # fmt: skip
            results[name] = result.to_dict()
        else:
            codes, answers = run_ranks(tmp_path, task)
            assert codes == [0, 0], answers
            assert answers[0][1] == ["done"] * 4
            results[name] = answers[0][2]
    two = results["two"]
    assert two["world_size"] == 2
    big_row = two["scenes"][0]
    assert big_row["parts"] == 2 and big_row["rank"] == [0, 1]  # 44,200 px > 0.04 Mpx: split
    assert {r["rank"] for r in two["scenes"][1:]} == {0, 1}  # the list is spread
    for stem in ("big", "s0", "s1", "s2"):
        for suffix in (".tif", "-p.tif"):
            a, b = tmp_path / "one" / f"{stem}{suffix}", tmp_path / "two" / f"{stem}{suffix}"
            assert np.array_equal(read(a), read(b)), (stem, suffix)
        one, two = tmp_path / "one" / f"{stem}.gpkg", tmp_path / "two" / f"{stem}.gpkg"
        assert polygons(one) == polygons(two)
    assert not list((tmp_path / "two").glob(".*"))


def test_two_ranks_cut_split_scenes_in_scene_scope_by_one_coarse_pass_each(tmp_path):
    """Two split scenes: their coarse passes are spread over the ranks (rank 1 makes the
    second) and every band of a scene is cut by its scene's pass."""
    scenes = [scene_with_holes(tmp_path / f"s{i}.tif", 150, 230, seed=i) for i in (1, 2)]
    texts = ["red on the left"]
    options = dict(chip=48, overlap=16, scope="scene")
    one = tmp_path / "one"
    one.mkdir()
    for scene in scenes:
        segment_raster(scene, texts, [one / f"{scene.stem}.tif", one / f"{scene.stem}.gpkg"],
                       predictor=Oracle(radius=2), **options)  # fmt: skip
    out = tmp_path / "two"
    out.mkdir()
    task = {"scenes": [str(s) for s in scenes], "texts": texts, "options": options,
            "outputs": [str(out / "{stem}.tif"), str(out / "{stem}.gpkg")],
            "batch": {"split_scene": True}, "record_coarse": True}  # fmt: skip
    codes, answers = run_ranks(tmp_path, task)
    assert codes == [0, 0], answers
    assert [r["rank"] for r in answers[0][2]["scenes"]] == [[0, 1], [0, 1]]
    made = sorted(p.name for p in (tmp_path / "report").glob("coarse-*"))
    assert made == ["coarse-s1-rank0", "coarse-s2-rank1"]  # one pass a scene, spread
    for scene in scenes:
        for suffix in (".tif", ".gpkg"):
            a, b = one / f"{scene.stem}{suffix}", out / f"{scene.stem}{suffix}"
            assert (np.array_equal(read(a), read(b)) if suffix == ".tif"
                    else polygons(a) == polygons(b)), (scene.stem, suffix)  # fmt: skip


def test_ranks_given_different_inputs_fail_clearly_instead_of_hanging(tmp_path):
    a = write_tif(tmp_path / "a.tif", random_rgb(40, 40))
    b = write_tif(tmp_path / "b.tif", random_rgb(40, 40, seed=1))
    out = tmp_path / "out"
    out.mkdir()
    task = {"scenes": [[str(a), str(b)], [str(a)]], "per_rank_scenes": True, "texts": ["red"],
            "outputs": [str(out / "{stem}.gpkg")],
            "options": {"chip": 32, "overlap": 8}}  # fmt: skip
    codes, answers = run_ranks(tmp_path, task, timeout=90)
    assert codes == [1, 1]
    for rank in (0, 1):
        assert answers[rank][0] == "error"
        assert "ranks disagree on the inputs" in answers[rank][1]


def test_sigterm_on_every_rank_exits_143_and_leaves_no_part_file(tmp_path):
    big = write_tif(tmp_path / "big.tif", random_rgb(400, 200, seed=3))
    out = tmp_path / "out"
    out.mkdir()
    task = {"scenes": [str(big)], "texts": ["red"], "slow": True,
            "outputs": [str(out / "{stem}.tif"), str(out / "{stem}.gpkg")],
            "options": {"chip": 48, "overlap": 16}, "batch": {"split_scene": True}}  # fmt: skip
    codes, answers = run_ranks(tmp_path, task)
    assert codes == [143, 143], answers
    assert sorted(os.listdir(out)) == []  # no output, no part file, no job folder

"""Many scenes in one run (fiacli.app.batch): outputs per scene, one model, resume, bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _oracle import Oracle, random_rgb, read, write_tif

from fiacli.app.batch import BatchOptions, expand_scenes, render, segment_many
from fiacli.app.pipeline import segment_raster
from fiacli.core.errors import FiacliError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

SIZES = [(150, 201), (97, 64), (130, 90)]


@dataclass
class Model:
    """A loaded model as segment_many wants it (a Segmenter has the same two attributes)."""

    predictor: Any = field(default_factory=Oracle)
    model_info: dict[str, Any] = field(default_factory=lambda: {"path": "oracle", "name": None})


def scenes(folder: Path, sizes=SIZES) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [
        write_tif(folder / f"s{i}.tif", random_rgb(h, w, seed=i)) for i, (h, w) in enumerate(sizes)
    ]


def run(paths, out, model=None, texts=("red", "green"), **kw):
    model = model or Model()
    outputs = kw.pop("outputs", [out / "{stem}.gpkg", out / "{stem}.tif"])
    return segment_many(paths, list(texts), outputs, model=model, chip=48, overlap=16, **kw), model


def test_every_scene_gets_its_outputs_and_manifest_and_one_encoding_per_expression(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    result, model = run(paths, out)
    assert [r["status"] for r in result.rows] == ["done"] * 3
    assert sorted(model.predictor.encode_calls) == [("green", False), ("red", False)]
    for p in paths:
        assert (out / f"{p.stem}.gpkg").exists() and (out / f"{p.stem}.tif").exists()
        man = json.loads((out / f"{p.stem}.manifest.json").read_text())
        assert man["scene"]["path"] == str(p) and man["model"]["path"] == "oracle"
        alone = tmp_path / f"alone-{p.stem}.tif"
        segment_raster(p, ["red", "green"], [alone], predictor=Oracle(), chip=48, overlap=16)
        assert np.array_equal(read(alone), read(out / f"{p.stem}.tif"))
    run_manifest = json.loads((out / "fiacli-run.json").read_text())
    assert [s["status"] for s in run_manifest["scenes"]] == ["done"] * 3
    assert run_manifest["summary"]["done"] == 3 and run_manifest["world_size"] == 1
    assert all(r["chips"] > 0 and r["objects"] > 0 for r in result.rows)
    assert not list(out.glob(".*"))  # no job folder, spool or temporary file left


def test_a_second_run_skips_complete_scenes_and_overwrite_redoes_them(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    run(paths, out)
    again, model = run(paths, out)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3
    assert model.predictor.batches == [] and again.rows[0]["chips"] > 0
    redo, model = run(paths, out, overwrite=True)
    assert [r["status"] for r in redo.rows] == ["done"] * 3 and model.predictor.batches


def test_other_options_are_not_complete_and_existing_outputs_need_overwrite(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    run(paths, out)
    other, _ = run(paths, out, threshold=0.3)
    assert [r["status"] for r in other.rows] == ["failed"] * 3
    assert "already exists" in other.rows[0]["error"]
    other_texts, _ = run(paths, out, texts=["red"])
    assert [r["status"] for r in other_texts.rows] == ["failed"] * 3


def test_the_model_is_not_loaded_when_nothing_is_left_to_do(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    run(paths, out)
    calls = []

    def load():
        calls.append(1)
        return Model()

    result = segment_many(paths, ["red", "green"], [out / "{stem}.gpkg", out / "{stem}.tif"],
                          model=load, model_info={"path": "oracle", "name": None},
                          chip=48, overlap=16)  # fmt: skip
    assert [r["status"] for r in result.rows] == ["skipped"] * 3 and calls == []


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    # largest first: s0 (30 chips x 2 expressions, batches of 4: 16 calls) completes, then s2
    with pytest.raises(KeyboardInterrupt):
        run(paths, out, model=Model(Oracle(fail_after=16)))
    assert (out / "s0.manifest.json").exists() and not (out / "s2.gpkg").exists()
    assert not list(out.glob(".*"))  # nothing half-written, no job folder
    again, model = run(paths, out)
    assert [r["status"] for r in again.rows] == ["skipped", "done", "done"]


def test_a_manifest_whose_outputs_were_not_all_renamed_is_redone_without_overwrite(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    run(paths, out)
    (out / "s1.tif").unlink()  # killed between the manifest and the last rename
    again, _ = run(paths, out)
    assert [r["status"] for r in again.rows] == ["skipped", "done", "skipped"]
    assert (out / "s1.tif").exists()


def test_an_unreadable_scene_fails_its_row_and_the_others_complete(tmp_path):
    paths = scenes(tmp_path / "in")
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"not a tiff")
    missing = tmp_path / "in" / "missing.tif"
    out = tmp_path / "out"
    out.mkdir()
    result, _ = run([paths[0], bad, paths[1], missing], out)
    status = {Path(r["scene"]).name: (r["status"], r["error"]) for r in result.rows}
    assert status["s0.tif"][0] == status["s1.tif"][0] == "done"
    assert status["broken.tif"][0] == "failed" and "cannot read" in status["broken.tif"][1]
    assert status["missing.tif"][0] == "failed" and "not found" in status["missing.tif"][1]
    assert len(result.failed) == 2 and "2 of 4 scene(s) failed" in result.failure_line()
    assert "broken.tif" in result.failure_line()


def test_a_scene_failing_mid_run_does_not_stop_the_others_unless_fail_fast(tmp_path):
    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    result, _ = run(paths, out, model=Model(Oracle(fail_after=0, fail_with=RuntimeError)))
    assert [r["status"] for r in result.rows] == ["failed"] * 3
    assert result.rows[0]["error"] == "RuntimeError"
    out2 = tmp_path / "out2"
    out2.mkdir()
    fast, _ = run(paths, out2, model=Model(Oracle(fail_after=0, fail_with=RuntimeError)),
                  batch=BatchOptions(fail_fast=True))  # fmt: skip
    assert sorted(r["status"] for r in fast.rows) == ["failed", "not run", "not run"]
    assert "not run (--fail-fast)" in fast.failure_line()


def test_a_template_mapping_two_scenes_to_one_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_tif(tmp_path / "a" / "s.tif", random_rgb(40, 40))
    two = write_tif(tmp_path / "b" / "s.tif", random_rgb(40, 40))
    model = Model()
    with pytest.raises(UsageError, match="would be written for both"):
        run([one, two], tmp_path, model=model, outputs=[tmp_path / "{stem}.gpkg"])
    with pytest.raises(UsageError, match="would be written for both"):
        run([one, two], tmp_path, model=model, outputs=[tmp_path / "all.gpkg"])
    assert model.predictor.encode_calls == []
    result, _ = run([one, two], tmp_path, outputs=[tmp_path / "{parent}-{stem}.gpkg"])
    assert {r["status"] for r in result.rows} == {"done"}
    assert (tmp_path / "a-s.gpkg").exists() and (tmp_path / "b-s.gpkg").exists()


def test_an_output_folder_that_cannot_be_written_fails_before_the_model_loads(tmp_path):
    paths = scenes(tmp_path / "in")
    (tmp_path / "a-file").write_text("")
    calls = []
    with pytest.raises(FiacliError, match="cannot create output folder"):
        segment_many(paths, "red", [tmp_path / "a-file" / "sub" / "{stem}.gpkg"],
                     model=lambda: calls.append(1), model_info={})  # fmt: skip
    with pytest.raises(FiacliError, match="not writable"):  # /proc refuses even root
        segment_many(paths, "red", ["/proc/self/{stem}.gpkg"], model=lambda: calls.append(1),
                     model_info={})  # fmt: skip
    assert calls == []


def test_an_output_that_is_an_input_is_refused(tmp_path):
    paths = scenes(tmp_path / "in")
    with pytest.raises(UsageError):
        run(paths, tmp_path, outputs=[tmp_path / "in" / "{stem}.tif"])


def test_folder_output_writes_each_format(tmp_path):
    paths = scenes(tmp_path / "in", SIZES[:2])
    out = tmp_path / "new" / "out"
    result, _ = run(paths, out, outputs=[out], batch=BatchOptions(output_format="gpkg,tif"))
    assert {r["status"] for r in result.rows} == {"done"}
    for p in paths:
        assert (out / f"{p.stem}.gpkg").exists() and (out / f"{p.stem}.tif").exists()
    with pytest.raises(UsageError, match="--format"):
        run(paths, out, outputs=[out / "{stem}.gpkg"], batch=BatchOptions(output_format="tif"))
    with pytest.raises(UsageError, match="unknown --format"):
        BatchOptions(output_format="png").check()


def test_probabilities_and_preview_are_templates_too(tmp_path):
    paths = scenes(tmp_path / "in", SIZES[:2])
    out = tmp_path / "out"
    out.mkdir()
    result, _ = run(paths, out, probabilities=out / "{stem}-p.tif", preview=out / "{stem}.png")
    assert {r["status"] for r in result.rows} == {"done"}
    assert all(
        (out / f"{p.stem}-p.tif").exists() and (out / f"{p.stem}.png").exists() for p in paths
    )
    with pytest.raises(UsageError, match="would be written for both"):
        run(paths, out, probabilities=out / "p.tif", overwrite=True)


def test_globs_and_input_lists(tmp_path, monkeypatch):
    paths = scenes(tmp_path / "in")
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "scenes.txt"
    listing.write_text("# two scenes\n../in/s1.tif\n\n" + str(paths[2]) + "\n")
    got = expand_scenes([str(tmp_path / "in" / "s0.*"), str(paths[1])], listing)
    assert [Path(p).name for p in got] == ["s0.tif", "s1.tif", "s2.tif"]  # s1 once
    with pytest.raises(UsageError, match="no file matches"):
        expand_scenes([str(tmp_path / "in" / "*.jp2")])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(FiacliError, match="names no scene"):
        expand_scenes([], empty)
    with pytest.raises(FiacliError, match="cannot read --input-list"):
        expand_scenes([], tmp_path / "nope.txt")


def test_render_templates():
    assert render("out/{stem}.gpkg", "/data/x/a.b.tif") == Path("out/a.b.gpkg")
    assert render("out/{parent}/{name}.gpkg", "/data/x/a.tif") == Path("out/x/a.tif.gpkg")
    assert render("plain.gpkg", "a.tif") == Path("plain.gpkg")
    with pytest.raises(UsageError, match="template"):
        render("out/{date}.gpkg", "a.tif")


def test_a_segmenter_segments_many_scenes(tmp_path):
    from fiacli.app.api import Segmenter

    paths = scenes(tmp_path / "in", SIZES[:2])
    model = Segmenter(Oracle())
    result = model.segment_many([str(tmp_path / "in" / "*.tif")], "red",
                                tmp_path / "out" / "{stem}.gpkg", chip=48, overlap=16)  # fmt: skip
    assert [r["status"] for r in result.rows] == ["done", "done"]
    assert all((tmp_path / "out" / f"{p.stem}.gpkg").exists() for p in paths)
    man = json.loads((tmp_path / "out" / "s0.manifest.json").read_text())
    assert man["model"] == model.model_info


def test_parent_of_a_scene_in_the_working_folder_is_that_folder(tmp_path, monkeypatch):
    """``{parent}`` of ``a.tif`` was empty, so ``-o '{parent}/{stem}.gpkg'`` wrote /a.gpkg."""
    monkeypatch.chdir(tmp_path)
    assert render("{parent}/{stem}.gpkg", "a.tif") == Path(f"{tmp_path.name}/a.gpkg")
    assert render("o/{parent}/{stem}.gpkg", "s3://bucket/2021/a.tif") == Path("o/2021/a.gpkg")
    with pytest.raises(UsageError, match=r"\{parent\} of /a.tif is empty"):
        render("{parent}/{stem}.gpkg", "/a.tif")


@pytest.mark.parametrize("which", ["list", "expressions", "scene"])
def test_the_run_manifest_never_replaces_an_input(tmp_path, which):
    paths = scenes(tmp_path / "in", SIZES[:1])
    paths.append(write_tif(tmp_path / "in" / "scene.json", random_rgb(40, 40)))  # a GeoTIFF
    paths.reverse()
    listing = tmp_path / "in" / "list.json"
    listing.write_text(f"{paths[1]}\n")
    before = {p: p.read_bytes() for p in (*paths, listing)}
    target = {"list": listing, "expressions": listing, "scene": paths[0]}[which]
    batch = BatchOptions(run_manifest=target, input_list=listing if which == "list" else None)
    with pytest.raises(UsageError, match="is the input"):
        segment_many(paths[:1], "red", [tmp_path / "out" / "{stem}.gpkg"], model=Model(),
                     batch=batch, inputs=[listing] if which == "expressions" else [])  # fmt: skip
    assert {p: p.read_bytes() for p in before} == before
    (tmp_path / "d.json").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        segment_many(paths[:1], "red", [tmp_path / "out" / "{stem}.gpkg"], model=Model(),
                     batch=BatchOptions(run_manifest=tmp_path / "d.json"))  # fmt: skip
    calls = []
    with pytest.raises(FiacliError, match="not writable: /proc/self"):  # before the model
        segment_many(paths[:1], "red", [tmp_path / "out" / "{stem}.gpkg"],
                     model=lambda: calls.append(1), model_info={},
                     batch=BatchOptions(run_manifest=Path("/proc/self/run.json")))  # fmt: skip
    assert calls == []


def test_a_killed_fail_fast_runs_stop_request_does_not_stop_the_next_run(tmp_path, monkeypatch):
    """A SIGKILLed --fail-fast run can leave its job folder with the stop request in it; the
    same command run again must run every scene, not report them "not run"."""
    from fiacli.app import batch as batch_module

    paths = scenes(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    real = batch_module._Run.execute

    def execute(self):  # what the killed run left: its job folder, with "stop" in it
        folder = self.manifest_path.parent / f".fiacli-job-{self._digest()[:12]}"
        folder.mkdir()
        (folder / "stop").touch()
        return real(self)

    monkeypatch.setattr(batch_module._Run, "execute", execute)
    result, _ = run(paths, out, batch=BatchOptions(fail_fast=True))
    assert [r["status"] for r in result.rows] == ["done"] * 3
    assert not list(out.glob(".fiacli-job-*"))


def test_a_manifest_of_another_shape_is_not_taken_for_finished_work(tmp_path):
    paths = scenes(tmp_path / "in", SIZES[:1])
    out = tmp_path / "out"
    out.mkdir()
    run(paths, out)
    man = out / "s0.manifest.json"
    data = json.loads(man.read_text())
    for broken in ({**data, "chips": "lots"}, {**data, "scene": "in/s0.tif"},
                   {**data, "options": []}, {**data, "per_expression": ["x"]}):  # fmt: skip
        man.write_text(json.dumps(broken))
        result, _ = run(paths, out, overwrite=True)
        assert [r["status"] for r in result.rows] == ["done"], broken


def test_a_list_file_with_a_byte_order_mark(tmp_path):
    paths = scenes(tmp_path / "in", SIZES[:1])
    listing = tmp_path / "l.txt"
    listing.write_text(f"{paths[0]}\n", encoding="utf-8-sig")
    assert expand_scenes([], listing) == [str(paths[0])]


def test_job_folders_of_killed_runs_of_other_jobs_are_swept(tmp_path):
    """SIGKILL leaves a run's hidden job folder; the next run in the folder removes those of
    ended processes of this machine, and keeps one whose owner still runs."""
    import subprocess
    import sys

    from fiacli.core.io import owner_tag

    paths = scenes(tmp_path / "in", SIZES[:1])
    out = tmp_path / "out"
    out.mkdir()
    machine = owner_tag().rsplit("-", 2)[0]
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    killed, running = out / ".fiacli-job-aaaaaaaaaaaa", out / ".fiacli-job-bbbbbbbbbbbb"
    for folder, owner in ((killed, f"{machine}-{ended}-1"), (running, owner_tag())):
        (folder / "00000").mkdir(parents=True)
        (folder / f"owner-{owner}").touch()
    result, _ = run(paths, out, texts=("blue",))  # another job
    assert [r["status"] for r in result.rows] == ["done"]
    assert not killed.exists() and running.exists()

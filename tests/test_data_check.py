"""`fiacli data check`: every problem kind, all reported in one run, and the CLI's table/JSON."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from fake_datasets import make_refsegrs, make_rrsisd
from PIL import Image

from fiacli.training.dataset_check import PROBLEM_KINDS, check_archive, check_dataset


def kinds(problems, severity=None):
    return {p.kind for p in problems if severity is None or p.severity == severity}


def _edit_refs(root, fn):
    path = root / "rrsisd" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    fn(refs)
    path.write_bytes(pickle.dumps(refs))


def _edit_coco(root, fn):
    path = root / "rrsisd" / "instances.json"
    coco = json.loads(path.read_text())
    fn({a["id"]: a for a in coco["annotations"]})
    path.write_text(json.dumps(coco))


def _zip_with_corrupt_member(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("good.txt", b"a" * 500)
        zf.writestr("bad.txt", b"b" * 500)
    data = bytearray(path.read_bytes())
    k = data.index(b"b" * 500)
    data[k + 10] ^= 0xFF  # flip bits inside bad.txt: its CRC no longer matches
    path.write_bytes(bytes(data))


def test_clean_datasets(tmp_path):
    make_rrsisd(tmp_path / "a")
    make_refsegrs(tmp_path / "b")
    for root in (tmp_path / "a", tmp_path / "b"):
        problems = check_dataset("auto", root)
        # custom data: one warning row about the split sizes, nothing else
        assert [(p.severity, p.kind) for p in problems] == [("warning", "split-count")]


def test_published_split_counts_are_errors_for_the_real_dataset(tmp_path):
    problems = check_dataset("rrsisd", make_rrsisd(tmp_path))
    rows = {p.where: p.message for p in problems if p.kind == "split-count"}
    assert rows == {
        "train": "2 refs, published 12,181",
        "val": "1 refs, published 1,740",
        "test": "1 refs, published 3,481",
    }
    assert all(p.severity == "error" for p in problems)


def test_rrsisd_every_problem_in_one_run(tmp_path):
    root = make_rrsisd(tmp_path, n_extra_train=4)  # refs 100–103 on images 100–103, ann 10
    jpegs = root / "images" / "rrsisd" / "JPEGImages"
    (jpegs / "00002.jpg").unlink()  # missing image (val ref 2)
    (jpegs / "00003.jpg").write_bytes(b"not a jpeg")  # unreadable (test ref 3)
    Image.new("RGB", (64, 64)).save(jpegs / "00101.jpg")  # size mismatch (ref 101)
    truncated = (jpegs / "00100.jpg").read_bytes()
    (jpegs / "00100.jpg").write_bytes(truncated[: len(truncated) // 2])  # decodes only partly

    def refs_fn(refs):
        refs[6]["ann_id"] = 999  # ref 102 -> missing annotation
        refs[7]["ann_id"] = 13  # ref 103 -> ann 13, made empty below
        refs.append({"ref_id": 7, "image_id": 1, "split": "train", "ann_id": 10})  # no sentences

    def coco_fn(anns):
        anns[11]["segmentation"][0]["counts"] = [5, 5]  # covers 10 of 1,920 pixels
        anns[13]["segmentation"] = [{"size": [40, 48], "counts": [1920]}]  # empty target
        anns[10]["categories_id"] = 3  # refs say 7

    _edit_refs(root, refs_fn)
    _edit_coco(root, coco_fn)
    _zip_with_corrupt_member(root / "RRSIS-D.zip")

    problems = check_dataset("auto", root)
    assert kinds(problems, "error") == {
        "missing-image", "unreadable-image", "size-mismatch", "bad-mask", "bad-ref", "archive",
    }  # fmt: skip
    assert kinds(problems, "warning") == {"empty-mask", "category", "split-count"}
    by_kind = {k: [p for p in problems if p.kind == k] for k in kinds(problems)}
    assert {p.where.split("/")[-1] for p in by_kind["unreadable-image"]} == {
        "00003.jpg",
        "00100.jpg",
    }
    assert by_kind["missing-image"][0].where == "images/rrsisd/JPEGImages/00002.jpg"
    assert "ref 101" in by_kind["size-mismatch"][0].where
    assert "64×64" in by_kind["size-mismatch"][0].message
    assert {p.where for p in by_kind["bad-ref"]} == {"ref 102", "refs(unc).p"}
    assert by_kind["archive"][0].where == "RRSIS-D.zip:bad.txt"  # only the corrupt member
    assert by_kind["empty-mask"][0].where.startswith("ref 103")
    # refs 0, 100 and 101 use ann 10 (categories_id changed); ref 103 now points to ann 13
    assert {p.where for p in by_kind["category"]} == {"ref 0", "ref 100", "ref 101", "ref 103"}
    # --quick reads headers only: the truncated JPEG passes, the garbage file does not
    quick = check_dataset("auto", root, deep=False)
    assert {p.where.split("/")[-1] for p in quick if p.kind == "unreadable-image"} == {"00003.jpg"}


def test_unsafe_pickle_is_a_row_and_the_walk_goes_on(tmp_path):
    root = make_rrsisd(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    _zip_with_corrupt_member(root / "download.zip")
    problems = check_dataset("rrsisd", root)
    pickle_rows = [p for p in problems if p.kind == "pickle"]
    assert len(pickle_rows) == 1 and "system" in pickle_rows[0].message
    assert "archive" in kinds(problems) and "empty-split" in kinds(problems)


def test_refsegrs_every_problem_in_one_run(tmp_path):
    root = make_refsegrs(tmp_path)
    (root / "images" / "101.tif").unlink()  # missing image
    (root / "masks" / "102.tif").unlink()  # missing mask
    (root / "masks" / "103.tif").write_bytes(b"II*\x00garbage")  # mask does not decode
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "104.tif")  # size
    Image.new("RGB", (48, 40)).save(root / "images" / "106.tif")
    Image.fromarray(np.full((40, 48), 50, np.uint8)).save(root / "masks" / "106.tif")  # empty
    with open(root / "output_phrase_val.txt", "a") as f:
        f.write("106 the tree\n")
    with open(root / "output_phrase_train.txt", "a") as f:
        f.write("105\n")  # malformed line
    (root / "output_phrase_extra.txt").write_text("")  # empty split
    problems = check_dataset("refsegrs", root)
    assert kinds(problems, "error") == {
        "missing-image", "missing-mask", "bad-mask", "size-mismatch", "bad-ref", "empty-split",
        "split-count",
    }  # fmt: skip
    assert kinds(problems, "warning") == {"empty-mask"}
    where = {p.kind: p.where for p in problems}
    assert where["bad-ref"] == "output_phrase_train.txt:3"
    assert where["empty-split"] == "output_phrase_extra.txt"
    assert where["size-mismatch"] == "masks/104.tif"


@pytest.mark.parametrize("layout", ["missing", "neither", "other"])
def test_layout_problems(tmp_path, layout):
    if layout == "missing":
        problems = check_dataset("auto", tmp_path / "nope")
        assert "does not exist" in problems[0].message
    elif layout == "neither":
        (tmp_path / "x").mkdir()
        problems = check_dataset("auto", tmp_path)
        assert "refs(unc).p" in problems[0].message and "output_phrase_" in problems[0].message
    else:
        problems = check_dataset("rrsisd", make_refsegrs(tmp_path))
        missing = {p.where for p in problems if p.kind == "layout"}
        assert missing == {
            "rrsisd/refs(unc).p",
            "rrsisd/instances.json",
            "images/rrsisd/JPEGImages",
        }
    assert problems and problems[0].kind == "layout" and problems[0].severity == "error"


def test_root_that_is_an_archive(tmp_path):
    archive = tmp_path / "RefSegRS.zip"
    _zip_with_corrupt_member(archive)
    problems = check_dataset("refsegrs", archive)
    assert [(p.kind, p.where) for p in problems] == [
        ("archive", "RefSegRS.zip:bad.txt"),
        ("layout", str(archive)),
    ]
    assert "extract it first" in problems[1].message


def test_truncated_tar_gz_and_not_a_zip(tmp_path):
    good = tmp_path / "ok.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        for k in range(3):
            data = np.random.default_rng(k).bytes(20_000)
            info = tarfile.TarInfo(f"images/{k}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert check_archive(good) == []
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    problems = check_archive(bad)
    assert len(problems) == 1 and problems[0].kind == "archive"
    assert problems[0].where.startswith("cut.tar.gz:images/")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK garbage")
    assert [p.where for p in check_archive(fake)] == ["fake.zip"]


def test_every_kind_is_documented():
    assert set(PROBLEM_KINDS) >= {
        "layout", "archive", "pickle", "annotations", "bad-ref", "missing-image",
        "unreadable-image", "missing-mask", "bad-mask", "size-mismatch", "empty-mask",
        "category", "split-count", "empty-split",
    }  # fmt: skip


def test_unreadable_instances_json(tmp_path):
    root = make_rrsisd(tmp_path)
    (root / "rrsisd" / "instances.json").write_text("{ not json")
    problems = check_dataset("auto", root)
    assert [p.kind for p in problems if p.severity == "error"] == ["annotations"]


# --------------------------------------------------------------------------- CLI


def test_cli_table_exit_code_and_row_cap(run_cli, tmp_path):
    root = make_rrsisd(tmp_path, n_extra_train=25)
    for k in range(25):
        (root / "images" / "rrsisd" / "JPEGImages" / f"{100 + k:05d}.jpg").unlink()
    r = run_cli("data", "check", "--data-root", str(root))
    assert r.exit_code == 1
    out = " ".join(r.stdout.split())
    assert "5 more missing-image" in out and "--all lists" in out
    assert "25 error(s), 1 warning(s)" in out and "fix the errors first" in out
    r = run_cli("data", "check", "--data-root", str(root), "--all")
    assert "more missing-image" not in r.stdout and r.stdout.count("missing-image") == 25


def test_cli_json(run_cli, tmp_path):
    root = make_refsegrs(tmp_path)
    (root / "masks" / "101.tif").unlink()
    r = run_cli("data", "check", "-d", "refsegrs", "--data-root", str(root), "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["layout"] == "refsegrs" and report["splits"] == {"test": 1, "train": 2, "val": 1}
    assert report["errors"] == 4  # the missing mask + three split counts
    assert {p["kind"] for p in report["problems"]} == {"missing-mask", "split-count"}


def test_cli_clean_exit_zero(run_cli, tmp_path):
    r = run_cli("data", "check", "--data-root", str(make_refsegrs(tmp_path)), "--quick")
    assert r.exit_code == 0 and "ready to train" in r.stdout


def test_cli_bad_dataset_name_is_a_usage_error(run_cli, tmp_path):
    r = run_cli("data", "check", "--dataset", "coco", "--data-root", str(tmp_path))
    assert r.exit_code == 2


def test_cli_check_that_finds_errors_ends_with_one_error_line(run_cli, tmp_path):
    r = run_cli("data", "check", "--data-root", str(tmp_path / "nothere"), "--dataset", "rrsisd")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("error:") == 1, r.stderr
    assert "data root does not exist" in " ".join(r.stderr.split())
    assert "Problems" in r.stdout  # the table still lists every problem

"""Synthetic RRSIS-D-layout data: round trip through the real loader, twins, phrases, atomicity."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fiacli.core.datasets import DATASETS
from fiacli.core.errors import FiacliError
from fiacli.training import synth
from fiacli.training.datasets import RRSISD, open_dataset
from fiacli.training.synth import (
    GRID_PHRASES,
    SYNTH_CLASSES,
    SynthObject,
    draw_scene,
    generate_synth,
)

RRSISD_CLASSES = DATASETS["rrsisd"].classes  # synthetic category ids are RRSIS-D's

PHRASE_CELL = {p: cell for cell, p in GRID_PHRASES.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = generate_synth(root, seed=7, counts={"train": 40, "val": 12, "test": 12}, size=96)
    return root, summary


def _refs(root):
    return pickle.loads((root / "rrsisd" / "refs(unc).p").read_bytes())


def _coco(root):
    return json.loads((root / "rrsisd" / "instances.json").read_text())


def test_round_trip_through_the_rrsisd_loader(small):
    root, summary = small
    assert summary.refs == {"train": 40, "val": 12, "test": 12}
    for split, n in summary.refs.items():
        ds = open_dataset("synth", root, split)
        assert isinstance(ds, RRSISD) and len(ds) == n
    ds = open_dataset("synth", root, "train")
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 96, 96) and s["mask"].shape == (96, 96)
        assert s["mask"].sum() > 30  # objects are not specks
        assert s["category"] in SYNTH_CLASSES and s["category"] in s["expression"].lower()
        assert RRSISD_CLASSES[s["category_id"]] == s["category"]
    assert sum(ds[i]["position_only"] for i in range(len(ds))) == summary.position_only["train"] > 0


def test_masks_match_the_drawn_objects_in_the_jpeg(small):
    root, _ = small
    ds = open_dataset("synth", root, "val")
    for i in range(len(ds)):
        s = ds[i]
        img = s["image"].permute(1, 2, 0).numpy().astype(float)
        m = s["mask"].numpy()
        # the object's interior is uniform-ish paint; a ring just outside is the ground
        inside = img[m].std(axis=0).mean()
        assert inside < 60, (s["expression"], inside)


def test_position_only_refs_have_two_identical_objects(small):
    root, _ = small
    refs, coco = _refs(root), _coco(root)
    anns = {a["id"]: a for a in coco["annotations"]}
    ds = open_dataset("synth", root, "train")
    from fiacli.training.rle import decode_segmentation

    po = [r for r in refs if r["position_only"]]
    assert po
    for ref in po:
        target = anns[ref["ann_id"]]
        twins = [
            a
            for a in coco["annotations"]
            if a["image_id"] == ref["image_id"] and a["categories_id"] == target["categories_id"]
        ]
        assert len(twins) == 2  # exactly two objects of the class: target and its twin
        crops = []
        for a in twins:
            m = decode_segmentation(a["segmentation"], 96, 96)
            x0, y0, x1, y1 = a["bbox"]
            crops.append(m[y0:y1, x0:x1])
        assert crops[0].shape == crops[1].shape and np.array_equal(crops[0], crops[1])
        # the expression is "the <class> <absolute phrase>", phrases differ between the twins
        sent = ref["sentences"][0]["sent"]
        cls = RRSISD_CLASSES[ref["category_id"]]
        assert sent.startswith(f"the {cls} ") and sent[len(f"the {cls} ") :] in PHRASE_CELL
    # and the loader exposes the flag
    flagged = {s["ref_id"] for s in (ds[i] for i in range(len(ds))) if s["position_only"]}
    assert flagged == {str(r["ref_id"]) for r in po if r["split"] == "train"}


def test_absolute_phrases_name_the_targets_cell(small):
    root, _ = small
    refs, coco = _refs(root), _coco(root)
    anns = {a["id"]: a for a in coco["annotations"]}
    checked = 0
    for ref in refs:
        sent = ref["sentences"][0]["sent"]
        phrase = next((p for p in PHRASE_CELL if sent.endswith(p)), None)
        if phrase is None or " of " in sent or "above" in sent or "below" in sent:
            continue
        x0, y0, x1, y1 = anns[ref["ann_id"]]["bbox"]
        cell = (int((y0 + y1) / 2 // 32), int((x0 + x1) / 2 // 32))  # 96 px / 3
        assert cell == PHRASE_CELL[phrase], sent
        # no other object of the class shares the cell: the phrase is unambiguous
        for a in coco["annotations"]:
            if a["image_id"] == ref["image_id"] and a["id"] != ref["ann_id"]:
                bx0, by0, bx1, by1 = a["bbox"]
                other = (int((by0 + by1) / 2 // 32), int((bx0 + bx1) / 2 // 32))
                assert other != cell
        checked += 1
    assert checked > 20


def test_expressions_look_like_rrsisd(small):
    root, _ = small
    sents = [r["sentences"][0]["sent"] for r in _refs(root)]
    assert all(s.startswith("the ") for s in sents)
    assert any(" of the " in s or " above the " in s or " below the " in s for s in sents)
    assert len({p for s in sents for p in PHRASE_CELL if s.endswith(p)}) >= 6


def test_seeded_and_splits_independent(tmp_path):
    kw = {"size": 64, "counts": {"train": 4, "val": 4, "test": 0}}
    generate_synth(tmp_path / "a", seed=1, **kw)
    generate_synth(tmp_path / "b", seed=1, **kw)
    generate_synth(tmp_path / "c", seed=2, **kw)
    generate_synth(tmp_path / "d", seed=1, size=64, counts={"train": 8, "val": 4, "test": 0})
    files = ("rrsisd/refs(unc).p", "rrsisd/instances.json", "images/rrsisd/JPEGImages/00000.jpg")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()
    # more train refs leave the val scenes unchanged
    val_a = [r["sentences"][0]["raw"] for r in _refs(tmp_path / "a") if r["split"] == "val"]
    val_d = [r["sentences"][0]["raw"] for r in _refs(tmp_path / "d") if r["split"] == "val"]
    assert val_a == val_d


def test_at_least_five_classes_and_object_choice(tmp_path):
    generate_synth(tmp_path / "all", size=64, counts={"train": 60, "val": 0, "test": 0})
    used = {a["categories_id"] for a in _coco(tmp_path / "all")["annotations"]}
    assert len(used) >= 5
    generate_synth(
        tmp_path / "two",
        size=64,
        classes=("vehicle", "ship"),
        counts={"train": 10, "val": 0, "test": 0},
    )
    used = {RRSISD_CLASSES[a["categories_id"]] for a in _coco(tmp_path / "two")["annotations"]}
    assert used == {"vehicle", "ship"}


def test_max_objects_and_refs_per_scene(tmp_path):
    generate_synth(tmp_path / "s", size=64, counts={"train": 30, "val": 0, "test": 0},
                   max_objects=3, refs_per_scene=3)  # fmt: skip
    per_image: dict[int, int] = {}
    for a in _coco(tmp_path / "s")["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) == 3 and min(per_image.values()) >= 2
    refs_per_image: dict[int, int] = {}
    for r in _refs(tmp_path / "s"):
        refs_per_image[r["image_id"]] = refs_per_image.get(r["image_id"], 0) + 1
    assert max(refs_per_image.values()) == 3
    with pytest.raises(FiacliError, match="between 2 and 9"):
        generate_synth(tmp_path / "t", size=64, max_objects=10)


def test_draw_scene_is_reusable_at_any_size():
    rng = np.random.default_rng(0)
    objects = [
        SynthObject("storage tank", (50, 60), 40),
        SynthObject("vehicle", (150, 250), 40, angle=0.0, color="red"),
    ]
    image, labels = draw_scene(rng, (200, 300), objects)
    assert image.shape == (200, 300, 3) and image.dtype == np.uint8 and labels.shape == (200, 300)
    tank, car = labels == 1, labels == 2
    assert abs(int(tank.sum()) - np.pi * 20**2) < 0.1 * np.pi * 20**2  # a disc of diameter 40
    ys, xs = np.nonzero(car)
    # 40 long, half as wide; PIL fills polygon edges inclusively (+1 px)
    assert 40 <= xs.max() - xs.min() + 1 <= 41 and 20 <= ys.max() - ys.min() + 1 <= 21
    assert car.sum() >= 0.95 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)  # a filled rectangle
    assert abs(ys.mean() - 150) <= 1 and abs(xs.mean() - 250) <= 1
    red = image[car].mean(axis=0)
    assert red[0] > 150 and red[1] < 90 and red[2] < 90


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    kw = {"size": 64, "counts": {"train": 2, "val": 0, "test": 0}}
    generate_synth(out, seed=0, **kw)
    before = (out / "rrsisd" / "refs(unc).p").read_bytes()
    with pytest.raises(FiacliError, match="already exists.*overwrite"):
        generate_synth(out, seed=1, **kw)
    generate_synth(out, seed=1, overwrite=True, **kw)
    assert (out / "rrsisd" / "refs(unc).p").read_bytes() != before
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(FiacliError, match="not a fiacli synthetic dataset"):
        generate_synth(other, overwrite=True, **kw)
    assert (other / "thesis.tex").read_text() == "x"


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth.draw_scene

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "draw_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_synth(tmp_path / "ds", size=64, counts={"train": 10, "val": 0, "test": 0})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": ("vehicle", "submarine")}, "unknown object class.*'submarine'"),
        ({"counts": {"train": 0, "val": 0, "test": 0}}, "not all 0"),
        ({"counts": {"dev": 3}}, "train/val/test"),
        ({"size": 16}, "--size"),
        ({"position_only_fraction": 2.0}, "position-only"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(FiacliError, match=match):
        generate_synth(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_synth_then_check(run_cli, tmp_path):
    out = tmp_path / "ds"
    r = run_cli("data", "synth", "-o", str(out), "--train", "6", "--val", "2", "--test", "2",
                "--size", "64", "--objects", "vehicle, storage tank", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["refs"] == {"train": 6, "val": 2, "test": 2}
    assert summary["classes"] == ["vehicle", "storage tank"]
    r = run_cli("data", "check", "--dataset", "synth", "--data-root", str(out))
    assert r.exit_code == 0, r.stdout
    assert "split-count" in r.stdout and "0 error(s), 1 warning(s)" in r.stdout
    r = run_cli("data", "synth", "-o", str(out))
    assert r.exit_code == 1 and "already exists" in " ".join(r.stderr.split())


def test_cli_synth_table(run_cli, tmp_path):
    r = run_cli("data", "synth", "-o", str(tmp_path / "t"), "--train", "4", "--val", "0",
                "--test", "0", "--size", "64", "--seed", "3")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "train" in r.stdout and "position-only" in r.stdout
    assert "fiacli train --dataset synth" in r.stderr


def test_cli_help_lists_every_class(run_cli):
    r = run_cli("data", "synth", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.replace("│", " ").split())
    assert all(c in text for c in SYNTH_CLASSES)

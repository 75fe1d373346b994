"""Loaders of the RRSIS-D and RefSegRS layouts, layout detection, errors, and COCO RLE."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from fake_datasets import (
    RRSISD_MASKS,
    make_refsegrs,
    make_rrsisd,
    rect_mask,
    refsegrs_expected_mask,
    runs_column_major,
)
from PIL import Image
from torch.utils.data import DataLoader

from fiacli.core.datasets import DATASETS
from fiacli.core.errors import FiacliError
from fiacli.core.safe_pickle import UnsafePickleError
from fiacli.training import rle
from fiacli.training.datasets import (
    RRSISD,
    DataFileError,
    DatasetNotFoundError,
    RefSegRS,
    categories_in,
    detect_layout,
    load_expressions,
    open_dataset,
)
from fiacli.training.transforms import Resize

# --------------------------------------------------------------------------- RRSIS-D


def test_rrsisd_sample_interface(tmp_path):
    ds = open_dataset("rrsisd", make_rrsisd(tmp_path), "train")
    assert isinstance(ds, RRSISD) and len(ds) == 2
    s = ds[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 40, 48)
    assert s["mask"].dtype == torch.bool and s["mask"].shape == (40, 48)
    assert np.array_equal(s["mask"].numpy(), RRSISD_MASKS[10])
    assert s["expression"] == "The storage tank on the left"  # the raw sentence
    assert (s["category"], s["category_id"]) == ("storage tank", 7)
    assert (s["ref_id"], s["image_id"], s["split"], s["index"]) == ("0", "1", "train", 0)
    assert s["dataset"] == "rrsisd" and s["position_only"] is False
    # the image is the JPEG's pixels, channels first
    jpeg = np.asarray(Image.open(tmp_path / "images/rrsisd/JPEGImages/00001.jpg").convert("RGB"))
    assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), jpeg)


def test_rrsisd_mask_is_union_of_rle_parts_and_reads_compressed_strings(tmp_path):
    make_rrsisd(tmp_path)
    train = open_dataset("rrsisd", tmp_path, "train")
    assert np.array_equal(train[1]["mask"].numpy(), RRSISD_MASKS[11])  # two parts
    val = open_dataset("rrsisd", tmp_path, "val")
    assert np.array_equal(val[0]["mask"].numpy(), RRSISD_MASKS[12])  # hand-encoded "0X1hj1"
    assert val[0]["category"] == "ship"


def test_dataloader_batches_resized_samples(tmp_path):
    make_rrsisd(tmp_path, n_extra_train=2)
    ds = open_dataset("rrsisd", tmp_path, "train", transform=Resize(32))
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.bool
    assert batch["expression"][1] == "the vehicle at the bottom"
    assert batch["category_id"].tolist() == [7, 18, 7, 7]
    assert batch["position_only"].tolist() == [False] * 4


def test_unsafe_refs_pickle_is_refused(tmp_path):
    make_rrsisd(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\).p.*refusing to unpickle"):
        open_dataset("rrsisd", tmp_path, "train")


def test_malformed_ref_is_named(tmp_path):
    make_rrsisd(tmp_path)
    path = tmp_path / "rrsisd" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    del refs[2]["ann_id"]
    path.write_bytes(pickle.dumps(refs))
    with pytest.raises(DataFileError, match=r"1 malformed ref.*ref_id 2.*ann_id.*data check"):
        open_dataset("rrsisd", tmp_path, "train")


def test_rrsisd_image_and_mask_of_different_sizes(tmp_path):
    make_rrsisd(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "images/rrsisd/JPEGImages/00001.jpg")
    ds = open_dataset("rrsisd", tmp_path, "train")
    with pytest.raises(DataFileError, match=r"00001.jpg.*differ in size.*40×48.*64×64"):
        ds[0]


def test_missing_annotation_and_missing_image(tmp_path):
    make_rrsisd(tmp_path)
    (tmp_path / "images/rrsisd/JPEGImages/00002.jpg").unlink()
    with pytest.raises(DataFileError, match="image not found.*00002.jpg"):
        open_dataset("rrsisd", tmp_path, "val")[0]
    coco_path = tmp_path / "rrsisd" / "instances.json"
    coco = json.loads(coco_path.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] != 13]
    coco_path.write_text(json.dumps(coco))
    with pytest.raises(DataFileError, match="annotation 13 is not in"):
        open_dataset("rrsisd", tmp_path, "test")[0]


# --------------------------------------------------------------------------- RefSegRS


def test_refsegrs_sample_threshold_and_category(tmp_path):
    ds = open_dataset("refsegrs", make_refsegrs(tmp_path), "train")
    assert isinstance(ds, RefSegRS) and len(ds) == 2
    s = ds[0]
    assert s["image"].shape == (3, 40, 48) and s["image"].dtype == torch.uint8
    # value 200 is foreground, value 50 (first two columns) is not: foreground is > 50
    assert np.array_equal(s["mask"].numpy(), refsegrs_expected_mask("101"))
    assert s["expression"] == "the road marking on the left road"
    # the first class named, the longest on a tie: "road marking", not "road"
    assert (s["category"], s["category_id"]) == ("road marking", 8)
    assert (s["ref_id"], s["split"], s["dataset"]) == ("101", "train", "refsegrs")
    tif = np.asarray(Image.open(tmp_path / "images" / "101.tif"))
    assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), tif)


def test_refsegrs_sample_without_class_name(tmp_path):
    make_refsegrs(tmp_path)
    (tmp_path / "output_phrase_test.txt").write_text("104 the thing in the corner\n")
    s = open_dataset("refsegrs", tmp_path, "test")[0]
    assert (s["category"], s["category_id"]) == ("", -1)


def test_categories_in_follows_substring_rule():
    vocab = ("road", "car", "road marking", "tree")
    assert categories_in("The road marking beside the cart", vocab) == [
        "road",
        "car",
        "road marking",
    ]
    assert categories_in("a bus", vocab) == []


def test_refsegrs_mask_size_mismatch(tmp_path):
    make_refsegrs(tmp_path)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "masks" / "102.tif")
    ds = open_dataset("refsegrs", tmp_path, "train")
    with pytest.raises(DataFileError, match=r"102.*differ in size.*20×20.*40×48"):
        ds[1]


def test_refsegrs_malformed_line(tmp_path):
    make_refsegrs(tmp_path)
    (tmp_path / "output_phrase_val.txt").write_text("103 the low vegetation\n104\n")
    with pytest.raises(DataFileError, match=r"output_phrase_val.txt:2"):
        open_dataset("refsegrs", tmp_path, "val")


# --------------------------------------------------------------------------- layouts and errors


def test_auto_detection_of_both_layouts(tmp_path):
    a, b = make_rrsisd(tmp_path / "a"), make_refsegrs(tmp_path / "b")
    assert detect_layout(a) == "rrsisd" and detect_layout(b) == "refsegrs"
    ra, rb = open_dataset("auto", a, "train"), open_dataset("auto", b, "val")
    assert isinstance(ra, RRSISD) and isinstance(rb, RefSegRS)
    assert ra[0]["dataset"] == rb[0]["dataset"] == "custom"
    assert set(ra[0]) == set(rb[0])  # one sample interface


def test_synth_name_reads_the_rrsisd_layout(tmp_path):
    ds = open_dataset("synth", make_rrsisd(tmp_path), "test")
    assert isinstance(ds, RRSISD) and ds[0]["dataset"] == "synth"


def test_wrong_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match=f"{missing}.*does not exist"):
        open_dataset("rrsisd", missing, "train")


def test_folder_in_neither_layout_names_both_trees(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetNotFoundError) as exc:
        open_dataset("auto", tmp_path, "train")
    msg = str(exc.value)
    assert "refs(unc).p" in msg and "instances.json" in msg and "JPEGImages" in msg
    assert "output_phrase_{train,val,test}.txt" in msg and "masks" in msg
    assert "\n" not in msg


def test_layout_of_the_other_dataset_gives_a_hint(tmp_path):
    make_refsegrs(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="looks like RefSegRS: use --dataset refsegrs"):
        open_dataset("rrsisd", tmp_path, "train")


def test_nested_dataset_folder_gives_a_hint(tmp_path):
    make_rrsisd(tmp_path / "RRSIS-D")
    with pytest.raises(DatasetNotFoundError, match="did you mean --data-root .*RRSIS-D"):
        open_dataset("auto", tmp_path, "train")


def test_bad_split_lists_the_available_ones(tmp_path):
    make_rrsisd(tmp_path / "a")
    make_refsegrs(tmp_path / "b")
    with pytest.raises(FiacliError, match="unknown split 'testA'.*available: test, train, val"):
        open_dataset("rrsisd", tmp_path / "a", "testA")
    with pytest.raises(FiacliError, match="unknown split 'dev'.*available: test, train, val"):
        open_dataset("refsegrs", tmp_path / "b", "dev")


def test_empty_split(tmp_path):
    make_refsegrs(tmp_path)
    (tmp_path / "output_phrase_val.txt").write_text("\n")
    with pytest.raises(FiacliError, match="split 'val'.*has no samples"):
        open_dataset("refsegrs", tmp_path, "val")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(FiacliError, match="unknown dataset 'coco'"):
        open_dataset("coco", tmp_path, "train")


def test_load_expressions_reads_no_image(tmp_path):
    make_rrsisd(tmp_path / "a")
    make_refsegrs(tmp_path / "b")
    for d in ("a/images", "b/images", "b/masks"):
        for f in (tmp_path / d).rglob("*.*"):
            f.unlink()
    assert load_expressions("rrsisd", tmp_path / "a", "train") == [
        "The storage tank on the left",
        "the vehicle at the bottom",
    ]
    assert load_expressions("refsegrs", tmp_path / "b", "test") == ["the white van"]
    assert load_expressions("auto", tmp_path / "b", "val") == ["the low vegetation"]
    with pytest.raises(FiacliError, match="unknown split 'dev'"):
        load_expressions("refsegrs", tmp_path / "b", "dev")


def test_published_counts():
    counts = {name: facts.published_counts for name, facts in DATASETS.items()}
    assert counts["rrsisd"] == {"train": 12_181, "val": 1_740, "test": 3_481}
    assert sum(counts["rrsisd"].values()) == 17_402
    assert sum(counts["refsegrs"].values()) == 4_420
    assert not counts["synth"]


# --------------------------------------------------------------------------- COCO RLE


@pytest.mark.parametrize(
    ("counts", "string"),
    [
        ([0, 5, 3, 1], "053L"),  # 4th run stored as 1 - 5 = -4: (-4 & 31) = 28 -> chr(76) 'L'
        ([100], "T3"),  # 100 = 4 + 32·3: (4|0x20)+48 = 'T', 3+48 = '3'
        ([2, 1, 1, 2], "2111"),  # 4th run stored as 2 - 1 = 1
        ([0, 40, 1880], "0X1hj1"),
    ],
)
def test_rle_compressed_string_matches_hand_encoding(counts, string):
    assert rle.counts_to_string(counts) == string
    assert rle.counts_from_string(string) == counts


def test_rle_decode_is_column_major():
    # [[0, 1, 1], [0, 0, 1]] read down the columns: 0 0 | 1 0 | 1 1 -> runs 2, 1, 1, 2
    expected = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    assert np.array_equal(rle.decode({"size": [2, 3], "counts": [2, 1, 1, 2]}), expected)
    assert np.array_equal(rle.decode({"size": [2, 3], "counts": "2111"}), expected)
    assert np.array_equal(rle.decode({"size": [2, 3], "counts": b"2111"}), expected)


def test_rle_encode_round_trip_against_a_plain_python_encoder():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, size=2)
        mask = rng.random((h, w)) < rng.random()
        assert rle.mask_to_counts(mask) == runs_column_major(mask)
        assert np.array_equal(rle.decode(rle.encode(mask)), mask)
        assert np.array_equal(rle.decode(rle.encode(mask, compress=False)), mask)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"size": [2, 3], "counts": [2, 1]}, "cover 3 pixels"),
        ({"size": [2, 3], "counts": "2\x7f"}, "invalid character"),
        ({"size": [2, 3], "counts": "X"}, "ends in the middle"),
        ({"counts": "2111"}, "needs 'size'"),
    ],
)
def test_rle_errors(bad, match):
    with pytest.raises(rle.RLEError, match=match):
        rle.decode(bad)


def test_segmentation_polygons_and_size_check():
    square = rle.decode_segmentation([[2, 1, 5, 1, 5, 4, 2, 4]], 6, 8)
    assert np.array_equal(square, rect_mask(1, 5, 2, 6, 6, 8))
    with pytest.raises(rle.MaskSizeError, match="mask is 2×3 but the image is 6×8"):
        rle.decode_segmentation([{"size": [2, 3], "counts": "2111"}], 6, 8)

"""Tiny seeded fake datasets in the real RRSIS-D and RefSegRS layouts (built in tmp_path).

Masks are axis-aligned rectangles, so the tests know every expected pixel without running the
code under test. RRSIS-D masks are written as COCO RLE in all three forms the loader accepts:
a hand-computed compressed string, an uncompressed list of runs, and a list of two parts whose
union is the mask.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 48  # not square, to catch transposed masks


def rect_mask(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def runs_column_major(mask: np.ndarray) -> list[int]:
    """Run lengths (zeros first) of ``mask`` in column-major order, by a plain Python loop —
    deliberately independent of fiacli's numpy encoder."""
    flat = [bool(v) for v in mask.T.reshape(-1)]
    runs, current, n = [], False, 0
    for v in flat:
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    runs.append(n)
    return runs


def _image(rng: np.random.Generator, h: int = H, w: int = W) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# masks of the fake RRSIS-D refs, by ann id
RRSISD_MASKS = {
    10: rect_mask(5, 15, 6, 20),  # stored as an uncompressed list of runs
    11: rect_mask(20, 30, 10, 40),  # stored as two RLE parts (union)
    12: rect_mask(0, 40, 0, 1),  # first column: counts [40, 1880] -> compressed string
    13: rect_mask(10, 12, 30, 33),
}
RRSISD_REFS = [  # (ref_id, image_id, ann_id, category_id, split, raw sentence)
    (0, 1, 10, 7, "train", "The storage tank on the left"),
    (1, 1, 11, 18, "train", "the vehicle at the bottom"),
    (2, 2, 12, 13, "val", "the ship on the left"),
    (3, 3, 13, 0, "test", "the airplane on the right"),
]


def make_rrsisd(root: Path, seed: int = 0, *, n_extra_train: int = 0) -> Path:
    """A 4-ref RRSIS-D tree (+ ``n_extra_train`` train refs reusing ann 10 with new images)."""
    rng = np.random.default_rng(seed)
    jpegs = root / "images" / "rrsisd" / "JPEGImages"
    jpegs.mkdir(parents=True)
    (root / "rrsisd").mkdir()
    refs_spec = list(RRSISD_REFS) + [
        (100 + k, 100 + k, 10, 7, "train", f"the storage tank number {k}")
        for k in range(n_extra_train)
    ]
    images, refs = [], []
    for ref_id, image_id, ann_id, cat, split, raw in refs_spec:
        name = f"{image_id:05d}.jpg"
        if not (jpegs / name).exists():
            _image(rng).save(jpegs / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        refs.append(
            {
                "image_id": image_id,
                "split": split,
                "sentences": [
                    {
                        "tokens": raw.lower().split(),
                        "raw": raw,
                        "sent_id": ref_id,
                        "sent": raw.lower(),
                    }
                ],
                "file_name": name,
                "category_id": cat,
                "ann_id": ann_id,
                "sent_ids": [ref_id],
                "ref_id": ref_id,
            }
        )
    top, bottom = RRSISD_MASKS[11].copy(), RRSISD_MASKS[11].copy()
    top[25:] = False
    bottom[:25] = False
    segs = {
        10: [{"size": [H, W], "counts": runs_column_major(RRSISD_MASKS[10])}],
        11: [
            {"size": [H, W], "counts": runs_column_major(top)},
            {"size": [H, W], "counts": runs_column_major(bottom)},
        ],
        # runs [0, 40, 1880], 5 bits per char + 48, 0x20 = "more follows" (hand-encoded):
        # 0 -> '0'; 40 = 8 + 32·1 -> (8|0x20)+48 = 'X', 1+48 = '1';
        # 1880 = 24 + 32·26 + 1024·1 -> (24|0x20)+48 = 'h', (26|0x20)+48 = 'j', 1+48 = '1'
        12: [{"size": [H, W], "counts": "0X1hj1"}],
        13: [{"size": [H, W], "counts": runs_column_major(RRSISD_MASKS[13])}],
    }
    category = {ann: cat for _, _, ann, cat, _, _ in RRSISD_REFS}
    anns = [
        {"id": a, "image_id": 0, "categories_id": category[a], "bbox": [0, 0, 1, 1],
         "segmentation": s}
        for a, s in segs.items()
    ]  # fmt: skip
    cats = [
        {"id": i, "name": n}
        for i, n in enumerate(
            ["airplane", "airport", "golf field", "expressway service area", "baseball field",
             "stadium", "ground track field", "storage tank", "basketball court", "chimney",
             "tennis court", "overpass", "train station", "ship", "expressway toll station",
             "dam", "harbor", "bridge", "vehicle", "windmill"]
        )
    ]  # fmt: skip
    coco = {"images": images, "annotations": anns, "categories": cats}
    (root / "rrsisd" / "instances.json").write_text(json.dumps(coco))
    with open(root / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


# RefSegRS: id -> (split, expression, mask rectangle)
REFSEGRS_SAMPLES = {
    "101": ("train", "the road marking on the left road", (2, 10, 3, 30)),
    "102": ("train", "vehicle parked near the building", (20, 30, 5, 9)),
    "103": ("val", "the low vegetation", (0, 40, 40, 48)),
    "104": ("test", "the white van", (30, 35, 30, 35)),
}


def make_refsegrs(root: Path, seed: int = 0) -> Path:
    """A 4-sample RefSegRS tree: RGB .tif images, grey .tif masks with values 0, 50 and 200."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for sid, (split, text, (y0, y1, x0, x1)) in REFSEGRS_SAMPLES.items():
        _image(rng).save(root / "images" / f"{sid}.tif")
        grey = np.zeros((H, W), dtype=np.uint8)
        grey[:, :2] = 50  # exactly at the threshold: background (foreground is > 50)
        grey[y0:y1, x0:x1] = 200
        Image.fromarray(grey).save(root / "masks" / f"{sid}.tif")
        lines[split].append(f"{sid} {text}")
    for split, rows in lines.items():
        (root / f"output_phrase_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def refsegrs_expected_mask(sid: str) -> np.ndarray:
    y0, y1, x0, x1 = REFSEGRS_SAMPLES[sid][2]
    return rect_mask(y0, y1, x0, x1)

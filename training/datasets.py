"""RRSIS-D and RefSegRS as map-style datasets with one sample interface (torchgeo style).

Layouts (docs/datasets.md#folder-layouts), ``ROOT`` being ``--data-root``:

- RRSIS-D: ``ROOT/rrsisd/refs(unc).p`` (untrusted pickle, read with an allow-list),
  ``ROOT/rrsisd/instances.json`` (COCO-like; annotations use the misspelt key ``categories_id``,
  bbox x1,y1,x2,y2, ``segmentation`` a list of COCO RLE dicts whose union is the mask) and
  ``ROOT/images/rrsisd/JPEGImages/*.jpg``. ``fiacli data synth`` writes this layout too.
- RefSegRS: ``ROOT/images/<id>.tif``, ``ROOT/masks/<id>.tif`` (foreground = value > 50) and
  ``ROOT/output_phrase_{split}.txt`` with one ``<id> <expression>`` per line.

A sample is a dict: ``image`` uint8 tensor (3, H, W) — CHW RGB, not normalised (the model owns
mean/std) — ``mask`` bool tensor (H, W), ``expression``, ``category`` (name, "" if none) and
``category_id`` (-1 if none), ``image_id``, ``ref_id``, ``split``, ``dataset``, ``index`` and
``position_only`` (synthetic scenes whose target differs from a twin only by its place). Every
value collates with torch's default collate. ``transform`` gets the whole dict.

Importing this module does not import torch (``fiacli parse --dataset`` only needs the
expressions); torch is loaded with the first sample.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.datasets import DATASET_CHOICES, DATASETS
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.safe_pickle import safe_load
from fiacli.training.readers import DataFileError, read_mask, read_rgb
from fiacli.training.rle import MaskSizeError, RLEError, decode_segmentation

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

SPLITS = ("train", "val", "test")
RRSISD_REFS = Path("rrsisd", "refs(unc).p")
RRSISD_INSTANCES = Path("rrsisd", "instances.json")
RRSISD_IMAGES = Path("images", "rrsisd", "JPEGImages")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class DatasetNotFoundError(FiacliError):
    """The data root does not hold the expected layout (message names the expected tree)."""


def rrsisd_tree(root: Path) -> str:
    return (
        f"{root / RRSISD_REFS}, {root / RRSISD_INSTANCES} and {root / RRSISD_IMAGES}/*.jpg "
        "(RRSIS-D layout)"
    )


def refsegrs_tree(root: Path) -> str:
    return (
        f"{root / 'images'}/<id>.tif, {root / 'masks'}/<id>.tif and "
        f"{root}/output_phrase_{{train,val,test}}.txt (RefSegRS layout)"
    )


# --------------------------------------------------------------------------- layout detection


def _looks_rrsisd(root: Path) -> bool:
    return (root / RRSISD_REFS).is_file() or (root / RRSISD_INSTANCES).is_file()


def _looks_refsegrs(root: Path) -> bool:
    return any(root.glob("output_phrase_*.txt")) or (
        (root / "images").is_dir() and (root / "masks").is_dir()
    )


def detect_layout(root: str | os.PathLike[str]) -> str:
    """``"rrsisd"`` or ``"refsegrs"`` for the folder ``root``, or a DatasetNotFoundError."""
    root = Path(root)
    if not root.exists():
        raise DatasetNotFoundError(f"dataset not found: data root {root} does not exist")
    if not root.is_dir():
        hint = "; extract the archive first" if is_archive(root) else ""
        raise DatasetNotFoundError(f"dataset not found: data root {root} is not a folder{hint}")
    rrsisd, refsegrs = _looks_rrsisd(root), _looks_refsegrs(root)
    if rrsisd and not refsegrs:
        return "rrsisd"
    if refsegrs and not rrsisd:
        return "refsegrs"
    if rrsisd and refsegrs:
        raise DatasetNotFoundError(
            f"{root} holds both an RRSIS-D and a RefSegRS layout; pass --dataset rrsisd or refsegrs"
        )
    hint = ""
    nested = [
        p for p in sorted(root.iterdir()) if p.is_dir() and (_looks_rrsisd(p) or _looks_refsegrs(p))
    ]
    if nested:
        hint = f"; did you mean --data-root {nested[0]}?"
    raise DatasetNotFoundError(
        f"dataset not found in root={str(root)!r}: expected {rrsisd_tree(root)} or "
        f"{refsegrs_tree(root)}{hint}"
    )


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


# --------------------------------------------------------------------------- index records


@dataclass(frozen=True)
class RefRecord:
    """One referring expression and where its image and mask live (no pixels loaded)."""

    ref_id: str
    image_id: str
    expression: str
    category: str
    category_id: int
    image_path: Path
    mask_source: Any  # RefSegRS: mask path; RRSIS-D: annotation id
    split: str
    position_only: bool = False


def categories_in(expression: str, vocabulary: Sequence[str]) -> list[str]:
    """Class names occurring in ``expression`` as plain substrings, in vocabulary order.

    This is how RefSegRS samples are grouped for the per-category table (docs/metrics.md) and
    mirrors the
    released parser's substring test (docs/parser.md): "road" also occurs in "road marking".
    """
    text = expression.lower()
    return [name for name in vocabulary if name in text]


def _main_category(expression: str, vocabulary: Sequence[str]) -> tuple[str, int]:
    """The class named first in the sentence (longest name on ties), or ("", -1)."""
    text = expression.lower()
    found = [(text.find(n), -len(n), n) for n in vocabulary if n in text]
    if not found:
        return "", -1
    name = min(found)[2]
    return name, list(vocabulary).index(name)


def read_refsegrs_split(root: Path, split: str) -> tuple[list[RefRecord], list[str]]:
    """Records of ``output_phrase_{split}.txt`` and one message per malformed line."""
    phrase_file = root / f"output_phrase_{split}.txt"
    try:
        lines = phrase_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{phrase_file} is not UTF-8 text: {exc}") from None
    images = _stems(root / "images")
    records: list[RefRecord] = []
    issues: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < 2:
            issues.append(
                f"{phrase_file.name}:{lineno}: expected '<id> <expression>', got {line!r}"
            )
            continue
        sid, expression = parts
        name, cid = _main_category(expression, DATASETS["refsegrs"].classes)
        image = images.get(sid, root / "images" / f"{sid}.tif")
        mask = root / "masks" / f"{sid}{image.suffix}"
        if not mask.exists():
            mask = root / "masks" / f"{sid}.tif"
        records.append(RefRecord(sid, sid, expression, name, cid, image, mask, split))
    return records, issues


def _stems(folder: Path) -> dict[str, Path]:
    """id -> image file in ``folder``, for layouts whose images are not all .tif."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        with os.scandir(folder) as entries:
            for e in entries:
                p = Path(e.path)
                if p.suffix.lower() in IMAGE_SUFFIXES and (p.stem not in out or p.suffix == ".tif"):
                    out[p.stem] = p
    return out


def read_refs(path: Path) -> list[Any]:
    """The raw ``refs(unc).p`` list, unpickled with an allow-list of plain data types."""
    try:
        with open(path, "rb") as f:
            refs = safe_load(f)
    except FileNotFoundError:
        raise DataFileError(f"{path} not found") from None
    except FiacliError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if not isinstance(refs, list):
        raise DataFileError(f"{path} should hold a list of refs, found {type(refs).__name__}")
    return refs


_REF_KEYS = {"image_id": int, "split": str, "ann_id": int, "ref_id": int, "sentences": list}


def parse_refs(refs: list[Any], split: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Refs with the fields fiacli needs (of ``split`` if given) and one message per bad entry."""
    good: list[dict[str, Any]] = []
    issues: list[str] = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            issues.append(f"ref #{i} is a {type(ref).__name__}, not a dict")
            continue
        bad = [k for k, t in _REF_KEYS.items() if not isinstance(ref.get(k), t)]
        sents = ref.get("sentences") or []
        if not bad and not all(
            isinstance(s, dict) and isinstance(s.get("raw", s.get("sent")), str) for s in sents
        ):
            bad = ["sentences[].raw"]
        if bad or not sents:
            issues.append(
                f"ref #{i} (ref_id {ref.get('ref_id')!r}) lacks {', '.join(bad or ['sentences'])}"
            )
            continue
        if split is None or ref["split"] == split:
            good.append(ref)
    return good, issues


def read_instances(path: Path) -> dict[str, Any]:
    """``instances.json`` as {"images": {id: …}, "anns": {id: …}, "categories": {id: name}}."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataFileError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataFileError(f"{path} has no 'annotations' list (not a COCO-style file)")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        anns = {int(a["id"]): a for a in data["annotations"]}
        images = {int(im["id"]): im for im in data.get("images", [])}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFileError(
            f"{path}: a category, annotation or image lacks its id/name ({exc})"
        ) from None
    return {"images": images, "anns": anns, "categories": cats}


def rrsisd_records(
    root: Path, split: str, refs: list[dict[str, Any]], categories: dict[int, str]
) -> list[RefRecord]:
    """One record per sentence of each ref (RRSIS-D has one sentence per ref)."""
    records: list[RefRecord] = []
    for ref in refs:
        cid = int(ref.get("category_id", -1))
        known = DATASETS["rrsisd"].classes
        name = categories.get(cid, known[cid] if 0 <= cid < len(known) else "")
        file_name = ref.get("file_name") or f"{ref['image_id']}.jpg"
        for k, sent in enumerate(ref["sentences"]):
            text = sent.get("raw", sent.get("sent"))
            rid = str(ref["ref_id"]) if len(ref["sentences"]) == 1 else f"{ref['ref_id']}:{k}"
            records.append(
                RefRecord(
                    rid,
                    str(ref["image_id"]),
                    text.strip(),
                    name,
                    cid,
                    root / RRSISD_IMAGES / file_name,
                    int(ref["ann_id"]),
                    split,
                    bool(ref.get("position_only", False)),
                )  # fmt: skip
            )
    return records


# --------------------------------------------------------------------------- datasets


class ReferringDataset:
    """Common sample interface; subclasses index records and load (image, mask) arrays.

    Map-style (``__len__``/``__getitem__``), so ``torch.utils.data.DataLoader`` and
    ``DistributedSampler`` use it directly.
    """

    name = "referring"
    class_names: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike[str], split: str, transform: Transform | None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.records: list[RefRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    @property
    def expressions(self) -> list[str]:
        return [r.expression for r in self.records]

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 HWC, mask bool HW) of sample ``index``; raises DataFileError."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        import torch

        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index %= len(self)
        rec = self.records[index]
        image, mask = self.load_arrays(index)
        sample: Sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask),
            "expression": rec.expression,
            "category": rec.category,
            "category_id": rec.category_id,
            "image_id": rec.image_id,
            "ref_id": rec.ref_id,
            "split": rec.split,
            "dataset": self.name,
            "index": index,
            "position_only": rec.position_only,
        }
        return self.transform(sample) if self.transform is not None else sample

    def _check_split(self, available: Sequence[str], tree: str) -> None:
        if self.split not in available:
            have = ", ".join(sorted(available)) or "none"
            raise UsageError(f"unknown split {self.split!r} in {self.root}; available: {have}")
        if not self.records:
            raise FiacliError(
                f"split {self.split!r} of {self.root} has no samples (expected {tree})"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
        )


class RRSISD(ReferringDataset):
    """RRSIS-D (17,402 refs, 800×800 JPEG, 20 classes); also reads ``fiacli data synth`` output."""

    name = "rrsisd"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Transform | None = None,
        *,
        name: str = "rrsisd",
    ):
        super().__init__(root, split, transform)
        self.name = name
        verify_rrsisd(self.root)
        raw = read_refs(self.root / RRSISD_REFS)
        refs, issues = parse_refs(raw, split)
        if issues:
            raise DataFileError(
                f"{self.root / RRSISD_REFS} has {len(issues)} malformed ref(s) "
                f"(first: {issues[0]}); run `fiacli data check` for the full list"
            )
        coco = read_instances(self.root / RRSISD_INSTANCES)
        self.categories: dict[int, str] = coco["categories"]
        self.class_names = (
            tuple(self.categories[k] for k in sorted(self.categories)) or DATASETS["rrsisd"].classes
        )
        self.records = rrsisd_records(self.root, split, refs, self.categories)
        needed = {r.mask_source for r in self.records}
        self._anns = {k: v for k, v in coco["anns"].items() if k in needed}
        self._check_split({r["split"] for r in parse_refs(raw)[0]}, rrsisd_tree(self.root))

    def annotation(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        ann = self._anns.get(rec.mask_source)
        if ann is None:
            raise DataFileError(
                f"ref {rec.ref_id}: annotation {rec.mask_source} is not in "
                f"{self.root / RRSISD_INSTANCES}"
            )
        return ann

    def load_mask(self, index: int, height: int, width: int) -> np.ndarray:
        rec, ann = self.records[index], self.annotation(index)
        try:
            return decode_segmentation(ann.get("segmentation"), height, width)
        except MaskSizeError as exc:
            raise DataFileError(
                f"ref {rec.ref_id}: image {rec.image_path.name} and its mask (annotation "
                f"{rec.mask_source}) differ in size: {exc}"
            ) from None
        except RLEError as exc:
            raise DataFileError(
                f"mask of ref {rec.ref_id} (annotation {rec.mask_source}, "
                f"image {rec.image_path.name}) does not decode: {exc}"
            ) from None

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.records[index].image_path)
        return image, self.load_mask(index, *image.shape[:2])


class RefSegRS(ReferringDataset):
    """RefSegRS (4,420 triplets, 512×512, 14 classes); targets may be several regions."""

    name = "refsegrs"
    class_names = DATASETS["refsegrs"].classes

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Transform | None = None,
        *,
        name: str = "refsegrs",
    ):
        super().__init__(root, split, transform)
        self.name = name
        verify_refsegrs(self.root)
        available = [
            p.name[len("output_phrase_") : -4] for p in self.root.glob("output_phrase_*.txt")
        ]
        if split in available:
            self.records, issues = read_refsegrs_split(self.root, split)
            if issues:
                raise DataFileError(
                    f"{len(issues)} malformed line(s) (first: {issues[0]}); "
                    "run `fiacli data check` for the full list"
                )
        self._check_split(available, refsegrs_tree(self.root))

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.records[index]
        image = read_rgb(rec.image_path)
        mask = read_mask(rec.mask_source)
        if mask.shape != image.shape[:2]:
            raise DataFileError(
                f"sample {rec.ref_id}: image {rec.image_path.name} and its mask differ in size: "
                f"the mask is {mask.shape[0]}×{mask.shape[1]} "
                f"but the image is {image.shape[0]}×{image.shape[1]}"
            )
        return image, mask


def verify_rrsisd(
    root: Path, parts: Sequence[Path] = (RRSISD_REFS, RRSISD_INSTANCES, RRSISD_IMAGES)
) -> None:
    """Raise DatasetNotFoundError (naming the expected tree) unless ``parts`` exist under root."""
    missing = [p for p in parts if not (root / p).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"RRSIS-D not found in root={str(root)!r}: missing {root / missing[0]}; "
            f"expected {rrsisd_tree(root)}{_other_layout_hint(root, 'rrsisd')}"
        )


def verify_refsegrs(root: Path) -> None:
    """Raise DatasetNotFoundError (naming the expected tree) unless root is a RefSegRS layout."""
    ok = (root / "images").is_dir() and (root / "masks").is_dir()
    if not ok or not any(root.glob("output_phrase_*.txt")):
        raise DatasetNotFoundError(
            f"RefSegRS not found in root={str(root)!r}: expected {refsegrs_tree(root)}"
            f"{_other_layout_hint(root, 'refsegrs')}"
        )


def _other_layout_hint(root: Path, wanted: str) -> str:
    if not root.is_dir():
        return f" (data root {root} does not exist)"
    if wanted == "rrsisd" and _looks_refsegrs(root):
        return "; this folder looks like RefSegRS: use --dataset refsegrs"
    if wanted == "refsegrs" and _looks_rrsisd(root):
        return "; this folder looks like RRSIS-D: use --dataset rrsisd"
    return ""


def dataset_layout(name: str, root: Path) -> str:
    """The folder layout of dataset ``name`` (the table's), detected at ``root`` for "auto"."""
    return detect_layout(root) if name == "auto" else DATASETS[name].layout  # type: ignore[index]


def open_dataset(
    name: str, root: str | os.PathLike[str], split: str, transform: Transform | None = None
) -> ReferringDataset:
    """The dataset ``name`` ("rrsisd", "refsegrs", "synth" or "auto") at ``root``.

    "synth" is the RRSIS-D layout written by ``fiacli data synth``; "auto" detects the layout of a
    custom folder. A wrong root, a folder in neither layout, an unknown or empty split all raise
    FiacliError naming what was expected.
    """
    if name not in DATASET_CHOICES:
        raise FiacliError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_CHOICES)}")
    root = Path(root)
    if not root.is_dir():
        detect_layout(root)  # raises the not-found error with its hints
    label = "custom" if name == "auto" else name
    if dataset_layout(name, root) == "refsegrs":
        return RefSegRS(root, split, transform, name=label)
    return RRSISD(root, split, transform, name=label)


def load_expressions(dataset: str, root: Path, split: str) -> list[str]:
    """The expressions of one split, in sample order, without reading any image.

    ``fiacli parse --dataset … --data-root … --split …`` calls this.
    """
    if dataset not in DATASET_CHOICES:
        raise UsageError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_CHOICES)}")
    root = Path(root)
    if dataset_layout(dataset, root) == "refsegrs":
        verify_refsegrs(root)
        if not (root / f"output_phrase_{split}.txt").is_file():
            raise UsageError(f"unknown split {split!r}: {root}/output_phrase_{split}.txt not found")
        records, issues = read_refsegrs_split(root, split)
        if issues:
            raise DataFileError(f"{len(issues)} malformed line(s) (first: {issues[0]})")
    else:
        verify_rrsisd(root, (RRSISD_REFS,))
        raw = read_refs(root / RRSISD_REFS)
        refs, issues = parse_refs(raw, split)
        if issues:
            raise DataFileError(f"{len(issues)} malformed ref(s) (first: {issues[0]})")
        if not refs:
            have = sorted({r["split"] for r in parse_refs(raw)[0]})
            raise UsageError(f"split {split!r} has no refs in {root}; available: {', '.join(have)}")
        records = rrsisd_records(root, split, refs, {})
    if not records:
        raise FiacliError(f"split {split!r} of {root} has no samples")
    return [r.expression for r in records]

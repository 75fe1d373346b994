"""Validate a dataset download before hours of training, reporting every problem at once.

``check_dataset`` walks the whole tree and never stops at the first problem: layout, archive
members that fail their CRC, the refs pickle (allow-listed types only), malformed refs or phrase
lines, missing or undecodable images and masks, image/mask size mismatches, empty masks and split
counts against the published ones.
"""

from __future__ import annotations

import lzma
import os
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.datasets import DATASET_CHOICES, DATASETS
from fiacli.core.errors import FiacliError
from fiacli.core.safe_pickle import UnsafePickleError
from fiacli.training.datasets import (
    RRSISD_IMAGES,
    RRSISD_INSTANCES,
    RRSISD_REFS,
    SPLITS,
    DatasetNotFoundError,
    RefRecord,
    dataset_layout,
    is_archive,
    parse_refs,
    read_instances,
    read_refs,
    read_refsegrs_split,
    refsegrs_tree,
    rrsisd_records,
    rrsisd_tree,
)
from fiacli.training.readers import read_mask
from fiacli.training.rle import MaskSizeError, RLEError, decode, decode_segmentation

ERROR, WARNING = "error", "warning"

# kind -> what it means (the CLI's legend and the JSON's vocabulary)
PROBLEM_KINDS = {
    "layout": "the data root is missing or not in the expected layout",
    "archive": "an archive (or one of its members) is corrupt or truncated",
    "pickle": "refs(unc).p is unreadable or holds types outside the allow-list",
    "annotations": "instances.json is unreadable or malformed",
    "bad-ref": "a ref or phrase line lacks fields or points to a missing annotation",
    "missing-image": "an image file referenced by the split is absent",
    "unreadable-image": "an image file does not decode",
    "missing-mask": "a mask file referenced by the split is absent",
    "bad-mask": "a mask does not decode",
    "size-mismatch": "an image and its mask differ in size",
    "empty-mask": "a target mask has no foreground pixel",
    "category": "a ref and its annotation disagree on the category",
    "split-count": "a split's size differs from the published one",
    "empty-split": "a split has no samples",
}


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` "error" (blocks training) or "warning"."""

    severity: str
    kind: str
    where: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class DatasetChecker:
    """Walks a dataset tree; ``run()`` returns every problem, ``counts`` the refs per split."""

    def __init__(
        self,
        dataset: str,
        root: str | os.PathLike[str],
        *,
        deep: bool = True,
        archives: bool = True,
    ):
        if dataset not in DATASET_CHOICES:
            raise FiacliError(
                f"unknown dataset {dataset!r}; use one of {', '.join(DATASET_CHOICES)}"
            )
        self.dataset = dataset
        self.root = Path(root)
        self.deep = deep
        self.archives = archives
        self.layout: str | None = None
        self.counts: dict[str, int] = {}
        self.records: list[RefRecord] = []
        self.problems: list[Problem] = []
        self._anns: dict[int, dict[str, Any]] = {}
        self._image_sizes: dict[Path, tuple[int, int] | None] = {}

    # -- reporting
    def _add(self, severity: str, kind: str, where: Any, message: str) -> None:
        if isinstance(where, Path) and where != self.root and where.is_relative_to(self.root):
            where = where.relative_to(self.root)  # rows stay readable in a narrow terminal
        self.problems.append(Problem(severity, kind, str(where), message))

    # -- phases
    def index(self) -> None:
        """Layout, archives, index files and split counts: everything but the per-sample files."""
        if self.archives:
            for archive in self._find_archives():
                self.problems.extend(check_archive(archive))
        if not self.root.is_dir():
            hint = "; extract it first" if is_archive(self.root) else ""
            what = "is not a folder" if self.root.exists() else "does not exist"
            self._add(ERROR, "layout", self.root, f"data root {what}{hint}")
            return
        try:
            self.layout = dataset_layout(self.dataset, self.root)
        except DatasetNotFoundError as exc:
            self._add(ERROR, "layout", self.root, str(exc))
            return
        if self.layout == "rrsisd":
            self._index_rrsisd()
        else:
            self._index_refsegrs()
        self._check_counts()

    def _find_archives(self) -> list[Path]:
        if self.root.is_file():
            return [self.root] if is_archive(self.root) else []
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_file() and is_archive(p)]
        for sub in (p for p in self.root.iterdir() if p.is_dir()):
            found += [p for p in sub.iterdir() if p.is_file() and is_archive(p)]
        return sorted(found)

    def _index_rrsisd(self) -> None:
        root = self.root
        for part in (RRSISD_REFS, RRSISD_INSTANCES, RRSISD_IMAGES):
            if not (root / part).exists():
                self._add(ERROR, "layout", root / part, f"missing; expected {rrsisd_tree(root)}")
        if not (root / RRSISD_REFS).is_file():
            return
        try:
            raw = read_refs(root / RRSISD_REFS)
        except UnsafePickleError as exc:
            self._add(ERROR, "pickle", root / RRSISD_REFS, str(exc).split(": ", 1)[-1])
            return
        except FiacliError as exc:
            self._add(ERROR, "pickle", root / RRSISD_REFS, str(exc).split(": ", 1)[-1])
            return
        refs, issues = parse_refs(raw)
        for issue in issues:
            self._add(ERROR, "bad-ref", RRSISD_REFS.name, issue)
        categories: dict[int, str] = {}
        if (root / RRSISD_INSTANCES).is_file():
            try:
                coco = read_instances(root / RRSISD_INSTANCES)
                categories, self._anns = coco["categories"], coco["anns"]
            except FiacliError as exc:
                self._add(ERROR, "annotations", root / RRSISD_INSTANCES, str(exc))
                return
        for split in sorted({r["split"] for r in refs}, key=_split_order):
            for ref in (r for r in refs if r["split"] == split):
                recs = rrsisd_records(root, split, [ref], categories)
                self.records += recs
                self.counts[split] = self.counts.get(split, 0) + len(recs)
                self._check_ref_annotation(ref, recs[0])

    def _check_ref_annotation(self, ref: dict[str, Any], rec: RefRecord) -> None:
        ann = self._anns.get(rec.mask_source)
        if ann is None:
            self._add(ERROR, "bad-ref", f"ref {ref['ref_id']}",
                      f"annotation {rec.mask_source} is not in instances.json")  # fmt: skip
            return
        cid = ann.get("categories_id", ann.get("category_id"))
        if cid is not None and "category_id" in ref and int(cid) != int(ref["category_id"]):
            self._add(WARNING, "category", f"ref {ref['ref_id']}",
                      f"ref says category {ref['category_id']}, annotation {rec.mask_source} "
                      f"says {cid}")  # fmt: skip

    def _index_refsegrs(self) -> None:
        root = self.root
        for part in ("images", "masks"):
            if not (root / part).is_dir():
                self._add(ERROR, "layout", root / part, f"missing; expected {refsegrs_tree(root)}")
        phrase_files = sorted(root.glob("output_phrase_*.txt"))
        if not phrase_files:
            self._add(
                ERROR,
                "layout",
                root,
                f"no output_phrase_<split>.txt; expected {refsegrs_tree(root)}",
            )
        for path in phrase_files:
            split = path.name[len("output_phrase_") : -4]
            try:
                recs, issues = read_refsegrs_split(root, split)
            except FiacliError as exc:
                self._add(ERROR, "bad-ref", path.name, str(exc))
                continue
            for issue in issues:
                self._add(ERROR, "bad-ref", issue.split(": ", 1)[0], issue.split(": ", 1)[-1])
            self.records += recs
            self.counts[split] = len(recs)
            if not recs:
                self._add(ERROR, "empty-split", path.name, f"split {split!r} has no samples")

    def _check_counts(self) -> None:
        facts = DATASETS.get(self.dataset)  # type: ignore[call-overload]
        published = facts.published_counts if facts is not None else {}
        if not published:
            have = ", ".join(f"{s} {n:,}" for s, n in self.counts.items()) or "none"
            ref = DATASETS[self.layout].published_counts  # type: ignore[index]
            pub = ", ".join(f"{s} {n:,}" for s, n in ref.items())
            label = "synthetic" if self.dataset == "synth" else "custom"
            self._add(WARNING, "split-count", "splits",
                      f"{label} data: split sizes ({have}) not compared with the published "
                      f"ones ({pub})")  # fmt: skip
            return
        for split, want in published.items():
            have = self.counts.get(split, 0)
            if have == 0:
                self._add(ERROR, "empty-split", split, f"no {split} samples (published: {want:,})")
            elif have != want:
                self._add(ERROR, "split-count", split, f"{have:,} refs, published {want:,}")

    def items(self) -> Iterator[RefRecord]:
        return iter(self.records)

    def check_record(self, rec: RefRecord) -> None:
        """Image and mask of one sample (each image file is opened once)."""
        size = self._image(rec.image_path)
        if self.layout == "rrsisd":
            self._rrsisd_mask(rec, size)
        else:
            self._refsegrs_mask(rec, size)

    def _image(self, path: Path) -> tuple[int, int] | None:
        if path in self._image_sizes:
            return self._image_sizes[path]
        from PIL import Image

        size = None
        if not path.is_file():
            self._add(ERROR, "missing-image", path, "not found")
        else:
            try:
                with warnings.catch_warnings(), Image.open(path) as img:
                    warnings.simplefilter("ignore")  # PIL warns, then fails, on corrupt files
                    size = (img.height, img.width)
                    if self.deep:
                        img.load()
            except Exception as exc:  # any decoder failure is the finding
                self._add(ERROR, "unreadable-image", path, f"{type(exc).__name__}: {exc}")
                size = None
        self._image_sizes[path] = size
        return size

    def _rrsisd_mask(self, rec: RefRecord, size: tuple[int, int] | None) -> None:
        ann = self._anns.get(rec.mask_source)
        if ann is None:
            return  # reported while indexing
        where = f"ref {rec.ref_id} (annotation {rec.mask_source})"
        seg = ann.get("segmentation")
        try:
            if size is not None:
                mask = decode_segmentation(seg, *size)
            else:  # image unusable: still check that the RLE itself decodes
                parts = seg if isinstance(seg, list) else [seg]
                mask = np.zeros((1, 1), bool) if not parts else decode(parts[0])
        except MaskSizeError as exc:
            self._add(ERROR, "size-mismatch", where, f"{rec.image_path.name}: {exc}")
            return
        except (RLEError, TypeError, ValueError) as exc:
            self._add(ERROR, "bad-mask", where, str(exc))
            return
        if size is not None and not mask.any():
            self._add(WARNING, "empty-mask", where, "the target mask is empty")

    def _refsegrs_mask(self, rec: RefRecord, size: tuple[int, int] | None) -> None:
        path = Path(rec.mask_source)
        if not path.is_file():
            self._add(ERROR, "missing-mask", path, f"not found (sample {rec.ref_id})")
            return
        try:
            mask = read_mask(path)
        except FiacliError as exc:
            self._add(ERROR, "bad-mask", path, str(exc).split(": ", 1)[-1])
            return
        if size is not None and mask.shape != size:
            self._add(ERROR, "size-mismatch", path,
                      f"mask is {mask.shape[0]}×{mask.shape[1]}, image {rec.image_path.name} is "
                      f"{size[0]}×{size[1]}")  # fmt: skip
        elif not mask.any():
            self._add(WARNING, "empty-mask", path, "no pixel above the threshold (50)")

    def run(self, on_item: Callable[[], None] | None = None) -> list[Problem]:
        self.index()
        for rec in self.records:
            self.check_record(rec)
            if on_item is not None:
                on_item()
        return self.problems


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def check_dataset(
    dataset: str, root: str | os.PathLike[str], *, deep: bool = True, archives: bool = True
) -> list[Problem]:
    """Every problem found in the dataset at ``root`` (empty list: ready to train)."""
    return DatasetChecker(dataset, root, deep=deep, archives=archives).run()


_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)


def check_archive(path: Path) -> list[Problem]:
    """Read every member of a .zip or .tar(.gz/.bz2/.xz) to its end, checking CRCs.

    A zip reports each bad member and goes on; a compressed tar is one stream, so reading stops
    at the first broken member (everything after it is unreachable anyway).
    """
    problems: list[Problem] = []

    def bad(member: str, exc: BaseException) -> None:
        where = f"{path.name}:{member}" if member else path.name
        problems.append(Problem(ERROR, "archive", where, f"{type(exc).__name__}: {exc}"))

    if path.name.lower().endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except _ARCHIVE_ERRORS as exc:
            bad("", exc)
            return problems
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                try:
                    with zf.open(info) as f:
                        while f.read(1 << 20):
                            pass
                except (*_ARCHIVE_ERRORS, NotImplementedError) as exc:
                    bad(info.filename, exc)
        return problems
    member = ""
    try:
        with tarfile.open(path, "r:*") as tf:
            for info in tf:
                member = info.name
                if info.isfile():
                    f = tf.extractfile(info)
                    while f is not None and f.read(1 << 20):
                        pass
            member = ""
    except _ARCHIVE_ERRORS as exc:
        bad(member, exc)
    return problems

"""The datasets fiacli knows, in one table: every fact about them that more than one module needs.

One :class:`DatasetFacts` per dataset: its class vocabulary and token length (what the parser
uses, docs/parser.md), its published split sizes (docs/datasets.md; FIANet paper, Section IV-A), its
training recipe (docs/recipe.md) and the folder layout it is stored in. Parsing, training, data
checks and the
command line all read this table; none of them states these facts again.

The names are declared once as ``Literal`` types, with their tuples from ``typing.get_args``: the
command line uses the types as option types (so a bad value is a usage error listing the choices),
and the library's own checks and messages use the tuples.

This module is in the lowest layer and imports nothing of fiacli but :mod:`fiacli.core.errors`,
so every layer can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from fiacli.core.errors import UsageError

ReleasedDatasetName = Literal["rrsisd", "refsegrs"]
"""The authors' datasets: released checkpoints are trained on them, and their folder layouts are
the two that fiacli reads (a custom or synthetic dataset is stored in one of them)."""
RELEASED_DATASET_NAMES: tuple[ReleasedDatasetName, ...] = get_args(ReleasedDatasetName)

DatasetName = Literal[ReleasedDatasetName, "synth"]
"""Every dataset of the table: the released ones and ``fiacli data synth``'s scenes."""
DATASET_NAMES: tuple[DatasetName, ...] = get_args(DatasetName)

DatasetChoice = Literal[DatasetName, "auto"]
"""What commands that read a data folder accept: a dataset, or ``auto`` (custom data: the layout
is detected, no published facts apply)."""
DATASET_CHOICES: tuple[DatasetChoice, ...] = get_args(DatasetChoice)


@dataclass(frozen=True)
class DatasetFacts:
    """What fiacli knows about one dataset.

    Attributes:
        name: the name commands and checkpoints use.
        title: the name as the papers write it.
        layout: the folder layout it is stored in (``rrsisd`` or ``refsegrs``, docs/datasets.md).
        classes: the ground-object vocabulary of the released parser (docs/parser.md);
            RRSIS-D's category
            ids 0-19 follow this order.
        token_length: WordPiece tokens per expression, ``[CLS]`` and ``[SEP]`` included
            (docs/parser.md).
        published_counts: refs per split as published (empty: nothing to compare with).
        recipe: the :class:`fiacli.training.recipe.TrainConfig` values of its training recipe
            that differ from the defaults (the token length is ``token_length``).
        scene_classes: the classes a synthetic scene draws (a subset of ``classes``); empty for
            real data.
    """

    name: DatasetName
    title: str
    layout: ReleasedDatasetName
    classes: tuple[str, ...]
    token_length: int
    published_counts: Mapping[str, int]
    recipe: Mapping[str, Any]
    scene_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # read-only views, so the table cannot be changed through a lookup
        object.__setattr__(self, "published_counts", MappingProxyType(dict(self.published_counts)))
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))


_RRSISD_CLASSES = (
    "airplane", "airport", "golf field", "expressway service area", "baseball field", "stadium",
    "ground track field", "storage tank", "basketball court", "chimney", "tennis court",
    "overpass", "train station", "ship", "expressway toll station", "dam", "harbor", "bridge",
    "vehicle", "windmill",
)  # fmt: skip

_REFSEGRS_CLASSES = (
    "road", "vehicle", "car", "van", "building", "truck", "trailer", "bus", "road marking",
    "bikeway", "sidewalk", "tree", "low vegetation", "impervious surface",
)  # fmt: skip
_SYNTH_SCENE_CLASSES = (  # the ones `fiacli data synth` can draw
    "storage tank", "vehicle", "airplane", "ship", "tennis court", "ground track field",
    "baseball field",
)  # fmt: skip

RRSISD = DatasetFacts(
    name="rrsisd",
    title="RRSIS-D",
    layout="rrsisd",
    classes=_RRSISD_CLASSES,
    token_length=22,
    published_counts={"train": 12_181, "val": 1_740, "test": 3_481},
    # RMSIN's box erasing: random black boxes in a fixed 20 % of the training refs
    recipe={"epochs": 40, "lr": 3e-5, "num_tmem": 3, "box_erasing": 0.2},
)

REFSEGRS = DatasetFacts(
    name="refsegrs",
    title="RefSegRS",
    layout="refsegrs",
    classes=_REFSEGRS_CLASSES,
    token_length=20,
    published_counts={"train": 2_172, "val": 431, "test": 1_817},  # FIANet paper, Section IV-A
    recipe={"epochs": 60, "lr": 5e-5, "num_tmem": 1, "box_erasing": 0.0},
)

SYNTH = DatasetFacts(
    name="synth",
    title="synthetic scenes",
    layout="rrsisd",  # written by `fiacli data synth`, parsed with the RRSIS-D vocabulary
    classes=_RRSISD_CLASSES,
    token_length=22,
    published_counts={},
    # Sized for a 2-core CPU (bench/learning_check.py: 4000 train refs -> 1500 steps, about 7
    # minutes on one thread). Deviations from docs/recipe.md#per-dataset-settings, and why:
    # - fianet-tiny (its preset adds a sin-cos absolute position code: a random-init Swin with
    #   only relative position bias never learns "on the left"), MiniLM-L6 text encoder frozen
    #   (its features are computed once per expression);
    # - 96² input: the 3×3 phrase grid is exactly stage 4's 3×3 map, and a step takes ~0.26 s;
    # - lr 2e-3 (not 3e-5): the Swin starts from random weights, not ImageNet;
    # - 3 epochs, no box erasing, no drop path, one TMEM block: a minutes budget, clean scenes.
    # Kept from docs/recipe.md: AdamW, weight decay 0.01, poly decay per iteration, batch 8,
    # 0.9·CE([0.9, 1.1]) + 0.1·Dice (as good as 0.5/0.5 here once positions are learnable).
    recipe={
        "preset": "fianet-tiny",
        "epochs": 3,
        "lr": 2e-3,
        "image_size": 96,
        "num_tmem": 1,
        "box_erasing": 0.0,
        "drop_path": 0.0,
        "freeze_text_encoder": True,
        "num_workers": 0,
    },
    scene_classes=_SYNTH_SCENE_CLASSES,
)

DATASETS: Mapping[DatasetName, DatasetFacts] = MappingProxyType(
    {d.name: d for d in (RRSISD, REFSEGRS, SYNTH)}
)


def dataset_facts(name: str) -> DatasetFacts:
    """The table's row for ``name``; case, ``-`` and ``_`` are ignored ("RRSIS-D" is rrsisd).

    An unknown name is a :class:`UsageError` that lists the known ones.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}")
    return DATASETS[key]  # type: ignore[index]

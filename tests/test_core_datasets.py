"""The dataset table (fiacli.core.datasets): its facts against the reference texts, and that the
rest of fiacli reads it instead of keeping copies."""

from __future__ import annotations

import dataclasses
import re
from typing import get_args

import pytest
from conftest import shared_path

from fiacli.core.datasets import (
    DATASET_CHOICES,
    DATASET_NAMES,
    DATASETS,
    REFSEGRS,
    RELEASED_DATASET_NAMES,
    RRSISD,
    SYNTH,
    DatasetChoice,
    DatasetName,
    dataset_facts,
)
from fiacli.core.errors import UsageError


def _reference(name: str) -> str:
    """A reference text with its line breaks and markdown emphasis folded into single spaces."""
    text = shared_path("reference", name).read_text(encoding="utf-8")
    return " ".join(text.replace("**", "").split())


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def released() -> str:
    return _reference("released-implementation.md")


@pytest.fixture(scope="module")
def paper() -> str:
    return _reference("fianet-paper.txt")


# ------------------------------------------------------------ facts against the references


def test_vocabularies_are_the_released_parsers(released):
    found = re.search(
        r"Vocabularies\. RefSegRS \((\d+)\): (.*?)\. RRSIS-D \((\d+)\): (.*?)\.", released
    )
    assert found, "the vocabulary paragraph of released-implementation.md §3 moved"
    for facts, count, names in ((REFSEGRS, found[1], found[2]), (RRSISD, found[3], found[4])):
        listed = tuple(n.strip() for n in names.split(","))
        assert len(listed) == int(count)
        assert facts.classes == listed  # order too: RRSIS-D's category ids follow it


def test_token_lengths_are_the_released_ones(released):
    found = re.search(r"padded to (\d+) tokens \(RefSegRS\) or (\d+) \(RRSIS-D\)", released)
    assert found, "the token budget sentence of released-implementation.md §3 moved"
    assert (REFSEGRS.token_length, RRSISD.token_length) == (int(found[1]), int(found[2]))


def test_published_split_counts(released, paper):
    rrsisd = re.search(
        r"RRSIS-D \(([\d,]+) refs;.*?train ([\d,]+) / val ([\d,]+) / test ([\d,]+)\)", released
    )
    assert rrsisd, "the RRSIS-D paragraph of released-implementation.md §5 moved"
    splits = dict(zip(("train", "val", "test"), map(_number, rrsisd.groups()[1:]), strict=True))
    assert dict(RRSISD.published_counts) == splits
    assert sum(RRSISD.published_counts.values()) == _number(rrsisd[1])

    refsegrs = re.search(
        r"training set has ([\d,]+) triplets, the validation set has ([\d,]+) triplets, and the "
        r"rest ([\d,]+) triplets are in the test set",
        paper,
    )
    assert refsegrs, "the RefSegRS paragraph of the FIANet paper (§4.1) moved"
    splits = dict(zip(("train", "val", "test"), map(_number, refsegrs.groups()), strict=True))
    assert dict(REFSEGRS.published_counts) == splits
    total = re.search(r"RefSegRS \(CC-BY-4\.0; ([\d,]+) triplets", released)
    assert total and sum(REFSEGRS.published_counts.values()) == _number(total[1])


def test_released_recipes(released):
    found = re.search(
        r"lr (\S+) \(RefSegRS, (\d+) epochs, `num_tmem` (\d+)\) or (\S+) \(RRSIS-D, (\d+) "
        r"epochs, `num_tmem` (\d+)\)",
        released,
    )
    assert found, "the recipe sentence of released-implementation.md §4 moved"
    for facts, (lr, epochs, tmem) in ((REFSEGRS, found.groups()[:3]), (RRSISD, found.groups()[3:])):
        assert facts.recipe["lr"] == float(lr)
        assert facts.recipe["epochs"] == int(epochs)
        assert facts.recipe["num_tmem"] == int(tmem)
    erasing = re.search(
        r"RRSIS-D training adds .*? in a fixed random (\d+) % of training refs", released
    )
    assert erasing and RRSISD.recipe["box_erasing"] == int(erasing[1]) / 100
    assert REFSEGRS.recipe["box_erasing"] == 0


# ------------------------------------------------------------ the table itself


def test_names_are_declared_once():
    assert tuple(DATASETS) == DATASET_NAMES == get_args(DatasetName)
    assert all(facts.name == name for name, facts in DATASETS.items())
    assert set(RELEASED_DATASET_NAMES) < set(DATASET_NAMES)
    assert DATASET_CHOICES == get_args(DatasetChoice) == (*DATASET_NAMES, "auto")
    assert {facts.layout for facts in DATASETS.values()} == set(RELEASED_DATASET_NAMES)


def test_synth_is_rrsisd_shaped():
    from fiacli.training.synth import CLASS_STYLES, SYNTH_CLASSES

    assert SYNTH.layout == "rrsisd" and SYNTH.classes == RRSISD.classes
    assert SYNTH.token_length == RRSISD.token_length
    assert SYNTH.scene_classes == SYNTH_CLASSES
    assert set(SYNTH.scene_classes) <= set(SYNTH.classes)
    assert set(CLASS_STYLES) == set(SYNTH.scene_classes)  # every class it lists can be drawn
    assert not SYNTH.published_counts and not RRSISD.scene_classes


def test_table_is_read_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RRSISD.token_length = 30  # type: ignore[misc]
    with pytest.raises(TypeError):
        RRSISD.recipe["epochs"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        RRSISD.published_counts["train"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        DATASETS["coco"] = RRSISD  # type: ignore[index]


def test_lookup():
    assert dataset_facts("RRSIS-D") is RRSISD and dataset_facts("ref_seg_rs") is REFSEGRS
    with pytest.raises(UsageError, match="unknown dataset 'coco'; use one of rrsisd, refsegrs"):
        dataset_facts("coco")


# ------------------------------------------------------------ everyone reads the table


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_recipe_and_parsing_read_the_table(name):
    from fiacli.text.parsing import ParseSettings
    from fiacli.training.recipe import resolve_config

    facts = DATASETS[name]
    config = resolve_config(name)
    assert config.token_length == facts.token_length
    assert {k: getattr(config, k) for k in facts.recipe} == dict(facts.recipe)
    settings = ParseSettings.for_dataset(name)
    assert (settings.classes, settings.token_length) == (facts.classes, facts.token_length)


def test_training_default_is_the_rrsisd_recipe():
    from fiacli.text.parsing import ParseSettings
    from fiacli.training.recipe import TrainConfig

    config = TrainConfig()
    assert config.dataset == RRSISD.name and config.token_length == RRSISD.token_length
    assert {k: getattr(config, k) for k in RRSISD.recipe} == dict(RRSISD.recipe)
    assert ParseSettings() == ParseSettings.for_dataset("rrsisd")


def test_category_tables_use_the_table():
    from fiacli.training.metrics import metric_groups

    groups = metric_groups("refsegrs", "", "the low vegetation near the road")
    assert set(groups) == {"road", "low vegetation"}  # RefSegRS: by its class names
    assert metric_groups("rrsisd", "ship", "the ship") == ["ship"]

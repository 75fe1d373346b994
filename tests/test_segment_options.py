"""SegmentOptions is the one declaration of segment's options: CLI, API and pipeline share it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import typer

from fiacli.app.areas import AREA_FIELD_NAMES, AreaOptions
from fiacli.app.batch import BATCH_FIELD_NAMES
from fiacli.app.segment_options import FIELD_NAMES, SegmentOptions, preflight
from fiacli.cli import app
from fiacli.core.errors import UsageError

# What a run is given besides its options: the inputs, the model and how to print.
RUN_INPUTS = {"scene", "expression", "expressions", "expressions_file", "model", "demo", "output",
              "device", "precision", "as_json"}  # fmt: skip
RUN_INPUTS |= set(BATCH_FIELD_NAMES)  # how many scenes and how to spread them (test_batch_cli.py)


def _segment_params() -> set[str]:
    group = typer.main.get_command(app)
    return {p.name for p in group.commands["segment"].params}


def test_every_field_has_a_cli_option_and_every_option_a_field():
    params = _segment_params()
    assert set(FIELD_NAMES) == params - RUN_INPUTS - set(AREA_FIELD_NAMES)
    assert params >= RUN_INPUTS  # the list above names real parameters, not stale ones


def test_every_area_field_has_a_cli_option_and_the_two_option_sets_are_apart():
    params = _segment_params()
    assert set(AREA_FIELD_NAMES) == params - RUN_INPUTS - set(FIELD_NAMES)
    assert not set(AREA_FIELD_NAMES) & set(FIELD_NAMES)  # one name, one meaning


def test_cli_area_defaults_are_the_dataclass_defaults():
    group = typer.main.get_command(app)
    defaults = {p.name: p.default for p in group.commands["segment"].params}
    assert AreaOptions.from_mapping(defaults) == AreaOptions()
    assert not AreaOptions.from_mapping(defaults).active


def test_cli_defaults_are_the_dataclass_defaults():
    group = typer.main.get_command(app)
    defaults = {p.name: p.default for p in group.commands["segment"].params}
    for field in dataclasses.fields(SegmentOptions):
        assert defaults[field.name] == field.default, field.name


def test_an_unknown_keyword_fails_at_once():
    with pytest.raises(UsageError, match="unknown segment option 'chp'"):
        SegmentOptions.build(chp=240)


def test_build_applies_changes_to_a_base_and_checks_them():
    base = SegmentOptions.build(chip=240, threshold=0.3)
    changed = SegmentOptions.build(base, scope="scene")
    assert (changed.chip, changed.threshold, changed.scope) == (240, 0.3, "scene")
    with pytest.raises(UsageError, match="--overlap"):
        SegmentOptions.build(base, overlap=240)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resolution": math.nan}, "--resolution"),
        ({"resolution": math.inf}, "--resolution"),
        ({"resolution": -1.0}, "--resolution"),
        ({"threshold": math.nan}, "--threshold"),
        ({"min_area": math.inf}, "--min-area"),
        ({"batch_size": 0}, "--batch-size"),
        ({"chip": 8}, "--chip"),
        ({"overlap": -1}, "--overlap"),
        ({"scope": "nowhere"}, "scope"),
        ({"blend": "max"}, "blend"),
        ({"dst_crs": "EPSG:nope"}, "--dst-crs"),
        ({"bands": "1,2"}, "--bands"),
    ],
)
def test_impossible_values_are_usage_errors(change, message):
    with pytest.raises(UsageError, match=message):
        SegmentOptions.build(**change)


def test_preflight_refuses_before_any_model(tmp_path):
    from _oracle import random_rgb, write_tif

    scene = write_tif(tmp_path / "s.tif", random_rgb(64, 64))
    plan = preflight(scene, [" the  red box "], [tmp_path / "o.gpkg"], SegmentOptions())
    assert plan.expressions == ["the red box"]
    assert plan.outputs.manifest == tmp_path / "o.manifest.json"
    with pytest.raises(UsageError, match="--cog needs"):
        preflight(scene, "red", [tmp_path / "o.gpkg"], SegmentOptions(cog=True))
    with pytest.raises(UsageError, match="empty"):
        preflight(scene, ["red", "  "], [tmp_path / "o.gpkg"], SegmentOptions())

"""Choice lists are declared once, as Literal types: the CLI option, the library check and the
messages all use the same tuple. A value outside it is a usage error (exit 2) naming them all."""

from __future__ import annotations

import pytest

from fiacli.core.datasets import DATASET_CHOICES, DATASET_NAMES, RELEASED_DATASET_NAMES
from fiacli.core.errors import UsageError
from fiacli.text.parsing import PARSE_MODES, ParseSettings
from fiacli.text.tagger import TAGGER_CHOICES, resolve_tagger
from fiacli.training.recipe import SELECT_METRICS, TRAIN_PRECISIONS, resolve_config


def unboxed(stderr: str) -> str:
    """Click's usage error without rich's box and wrapping."""
    return " ".join(stderr.translate({ord(c): " " for c in "│╭╰╮╯─"}).split())


# (command line before the option, option, the tuple its values come from)
CHOICES = [
    (("parse", "the ship"), "--dataset", DATASET_NAMES),
    (("parse", "the ship"), "--mode", PARSE_MODES),
    (("parse", "the ship"), "--tagger", TAGGER_CHOICES),
    (("data", "check", "--data-root", "."), "--dataset", DATASET_CHOICES),
    (("eval", "-m", "m.safetensors", "--data-root", "."), "--dataset", DATASET_CHOICES),
    (("train", "-o", "run"), "--dataset", DATASET_NAMES),
    (("train", "-o", "run"), "--parse-mode", PARSE_MODES),
    (("train", "-o", "run"), "--select-metric", SELECT_METRICS),
    (("train", "-o", "run"), "--precision", TRAIN_PRECISIONS),
    (("convert", "x.pth", "-o", "y.safetensors"), "--dataset", RELEASED_DATASET_NAMES),
]


@pytest.mark.parametrize(("args", "option", "choices"), CHOICES, ids=lambda x: str(x))
def test_bad_choice_is_a_usage_error_listing_the_tuple(run_cli, args, option, choices):
    result = run_cli(*args, option, "bogus")
    assert result.exit_code == 2, result.stderr
    listed = ", ".join(repr(c) for c in choices)
    assert f"'bogus' is not one of {listed}" in unboxed(result.stderr)


def test_convert_dataset_ignores_case(run_cli, tmp_path):
    result = run_cli("convert", str(tmp_path / "x.pth"), "-o", str(tmp_path / "y.safetensors"),
                     "--dataset", "RRSISD")  # fmt: skip
    assert result.exit_code == 1 and "not found" in result.stderr  # past option parsing


def test_library_checks_use_the_same_tuples():
    with pytest.raises(UsageError, match=", ".join(PARSE_MODES)):
        ParseSettings(mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=", ".join(TAGGER_CHOICES)):
        resolve_tagger("bogus")
    with pytest.raises(UsageError, match="select metric must be miou or oiou"):
        resolve_config("rrsisd", overrides={"select_metric": "dice"})
    with pytest.raises(UsageError, match="precision must be auto, fp32, bf16 or fp16"):
        resolve_config("rrsisd", overrides={"precision": "int8"})
    with pytest.raises(UsageError, match="unknown dataset 'coco'; use one of rrsisd, refsegrs"):
        resolve_config("coco")
    for name, choices in (("select_metric", SELECT_METRICS), ("precision", TRAIN_PRECISIONS)):
        for value in choices:
            assert getattr(resolve_config("rrsisd", overrides={name: value}), name) == value

"""Tagger choice (auto / nltk / offline) and the offline tagger's agreement with NLTK's.

The real tagger is read from ../shared/nltk_data in place (never copied into the repository).
"""

from __future__ import annotations

import importlib.util
import sys

import nltk
import pytest
from conftest import REPO, shared_path

from fiacli.core.errors import FiacliError, UsageError
from fiacli.text.tagger import offline_tag, reset_tagger_cache, resolve_tagger


@pytest.fixture
def no_nltk_data(tmp_path, monkeypatch):
    """NLTK looks only in an empty folder: its tagger is 'not installed'."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    reset_tagger_cache()
    yield
    reset_tagger_cache()


@pytest.fixture
def shared_nltk_data(monkeypatch):
    """NLTK also looks in ../shared/nltk_data (skips when absent)."""
    folder = shared_path("nltk_data")
    monkeypatch.setattr(nltk.data, "path", [str(folder), *nltk.data.path])
    reset_tagger_cache()
    yield folder
    reset_tagger_cache()


def test_offline_is_always_available():
    name, tag = resolve_tagger("offline")
    assert name == "offline" and tag(["the", "ship"]) == ["DT", "NN"]


def test_missing_nltk_data_auto_falls_back_nltk_explains(no_nltk_data):
    assert resolve_tagger("auto")[0] == "offline"
    with pytest.raises(FiacliError) as err:
        resolve_tagger("nltk")
    message = str(err.value)
    assert "\n" not in message
    assert "NLTK_DATA" in message
    assert "python -m nltk.downloader averaged_perceptron_tagger_eng" in message
    assert "--tagger offline" in message


def test_unknown_tagger_is_a_usage_error():
    with pytest.raises(UsageError, match="auto, nltk, offline"):
        resolve_tagger("spacy")


def test_auto_uses_nltk_when_installed(shared_nltk_data):
    name, tag = resolve_tagger("auto")
    assert name == "nltk"
    assert tag(["the", "ship", "on", "the", "lower", "left"])[-2:] == ["JJR", "VBD"]


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        # what the perceptron does on these (the grammar depends on each of these choices)
        ("the ship on the left", "DT NN IN DT NN"),
        ("the ship on the lower left", "DT NN IN DT JJR VBD"),
        ("the ship on the upper right", "DT NN IN DT JJ NN"),
        ("the ship on the left side", "DT NN IN DT JJ NN"),
        ("the car in the left lane", "DT NN IN DT NN NN"),
        ("the car at the top", "DT NN IN DT NN"),
        ("the car on the top", "DT NN IN DT JJ"),
        ("the car at the bottom left", "DT NN IN DT NN VBD"),
        ("the car on the far left", "DT NN IN DT RB NN"),
        ("the car next to the road", "DT NN IN TO DT NN"),
        ("the car with a grey roof", "DT NN IN DT NN NN"),
        ("the car with a white roof", "DT NN IN DT JJ NN"),
        ("the car in the lower-left corner", "DT NN IN DT JJ NN"),
        ("The Car On The Right", "DT NNP IN DT NNP"),
    ],
)
def test_offline_tags_what_the_grammar_reads(text, tags):
    assert " ".join(offline_tag(text.split())) == tags


def _bench():
    path = REPO / "bench" / "tagger_agreement.py"
    spec = importlib.util.spec_from_file_location("tagger_agreement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_offline_tagger_agrees_with_nltk_on_98_percent(shared_nltk_data):
    bench = _bench()
    for name, path in bench.SETS.items():
        expressions = bench.read_expressions(path)
        assert len(expressions) >= (300 if name == "dev" else 150)
        result = bench.compare(expressions)
        shown = "\n".join(text for text, _ in result.disagreements)
        assert result.rate >= bench.THRESHOLD, f"{name}: {result.rate:.1%}\n{shown}"


def test_expression_sets_are_disjoint():
    bench = _bench()
    sets = {name: set(bench.read_expressions(path)) for name, path in bench.SETS.items()}
    held_out = sets.pop("held-out")
    for name, expressions in sets.items():
        assert not held_out & expressions, name

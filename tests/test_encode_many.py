"""Many expressions are encoded in batches (with progress), and a cut expression is said once."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def predictor():
    from fiacli.app.predictor import RefSegPredictor
    from fiacli.models import FIANet, minimal_config
    from fiacli.text.parsing import ParseSettings

    torch.manual_seed(0)
    meta = {"parse": ParseSettings.for_dataset("rrsisd").to_dict()}
    return RefSegPredictor(FIANet(minimal_config()), meta, device="cpu")


EXPRESSIONS = ["the red car", "the ship on the left", "a large storage tank near the road",
               "the white van", "the airplane at the top"]  # fmt: skip


def test_encode_many_equals_encode_one_by_one(predictor):
    batches = []
    many = predictor.encode_many(EXPRESSIONS, batch_size=2, on_batch=batches.append)
    assert batches == [2, 2, 1]
    for text, enc in zip(EXPRESSIONS, many, strict=True):
        one = predictor.encode(text)
        assert enc.text == text and enc.parsed.input_ids == one.parsed.input_ids
        assert len(enc.features) == 1
        torch.testing.assert_close(enc.features.context, one.features.context)
        torch.testing.assert_close(enc.features.position, one.features.position)


def test_a_cut_expression_is_said_once(predictor, capsys):
    long = "the small white car parked " * 12
    predictor.encode_many([long, long + "again", "the ship"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cut to 22 tokens: 2 expressions"), err
    predictor.encode(long)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: cut to 22 tokens: 'the small white car") and "lost" in line
    assert len(line) < 300


def test_the_pipeline_encodes_in_batches_when_the_predictor_can(predictor, monkeypatch):
    from fiacli.app.pipeline import encode_all

    calls = []
    real = predictor.encode_many
    monkeypatch.setattr(predictor, "encode_many", lambda *a, **k: calls.append(a) or real(*a, **k))
    encoded = encode_all(predictor, EXPRESSIONS, drop_position=True)
    assert len(calls) == 1 and len(encoded) == len(EXPRESSIONS)

    class OneByOne:  # a ChipPredictor with encode only (the tests' oracle is one)
        def encode(self, text, *, drop_position=False):
            return (text, drop_position)

    assert encode_all(OneByOne(), ["a", "b"], drop_position=False) == [("a", False), ("b", False)]

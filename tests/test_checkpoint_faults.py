"""Hostile and broken checkpoints: released files with odd ``args``, a text encoder smaller than
its tokenizer, a target that does not match the output's extension, output = input."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from fiacli.core.errors import FiacliError, UsageError
from fiacli.models import minimal_config
from fiacli.models.convert import (
    build_from_released,
    convert_checkpoint,
    fiacli_to_released,
    read_released,
)
from fiacli.models.fianet import uninitialised_fianet


@pytest.fixture(scope="module")
def minimal_model():
    torch.manual_seed(0)
    cfg = minimal_config().replace(text_encoder="embedded")
    return uninitialised_fianet(cfg)


def _released_pth(path, model, args):
    state = fiacli_to_released(model.state_dict(), model.config)
    payload = {"model": state} if args is ... else {"model": state, "args": args}
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("args", "note"),
    [
        ({"dataset": "rrsisd", "img_size": 64}, None),  # a dict (re-saved files)
        (argparse.Namespace(dataset="rrsisd", img_size=64), None),
        (7, "its 'args' entry is int"),
        ([1, 2], "its 'args' entry is list"),
        ({"dataset": "rrsisd", "img_size": "big"}, "img_size 'big' is not an image size"),
    ],
    ids=["dict", "namespace", "int", "list", "bad-img-size"],
)
def test_released_args_of_any_type_convert_or_are_noted(tmp_path, minimal_model, args, note):
    pth = _released_pth(tmp_path / "r.pth", minimal_model, args)
    released = read_released(pth)
    model, meta, notes = build_from_released(released, dataset="rrsisd")
    assert meta["parse"]["mode"] == "released"
    if note is None:
        assert model.config.image_size == 64 and not [n for n in notes if "args" in n]
    else:
        assert any(note in n for n in notes), notes


def test_a_released_args_int_via_the_cli_is_a_warning_not_a_traceback(
    tmp_path, minimal_model, run_cli
):
    pth = _released_pth(tmp_path / "r.pth", minimal_model, 7)
    result = run_cli("convert", str(pth), "-o", str(tmp_path / "m.safetensors"), "--dataset",
                     "rrsisd")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "warning: its 'args' entry is int" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_text_encoder_smaller_than_its_tokenizer_is_said_at_load_and_refused_at_encode(
    tmp_path,
):
    from fiacli.app.predictor import RefSegPredictor
    from fiacli.models.checkpoint import load_checkpoint, save_checkpoint

    cfg = minimal_config()
    small = cfg.replace(text_config={**cfg.text_config, "vocab_size": 3000})
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        uninitialised_fianet(small),
        {
            "parse": {
                "mode": "fiacli",
                "classes": ["ship"],
                "token_length": 20,
                "tokenizer": "bert-base-uncased",
            }
        },  # fmt: skip
    )
    model, meta = load_checkpoint(path)  # loads, with a warning line
    predictor = RefSegPredictor(model, meta, device="cpu")
    predictor.encode("a ship")  # ids below 3000 still work
    with pytest.raises(FiacliError, match="outside the text encoder's vocabulary of 3,000"):
        predictor.encode("the white van beside the swimming pool")  # ids past 3000


def test_the_load_warning_names_the_mismatch():
    from fiacli.models.text_encoder import text_fit_problems

    problems = text_fit_problems(
        {"vocab_size": 1000, "max_position_embeddings": 16},
        {"tokenizer": "bert-base-uncased", "token_length": 40},
    )
    assert len(problems) == 2
    assert "vocabulary of 1,000 tokens" in problems[0] and "30,522" in problems[0]
    assert "16 position embeddings" in problems[1]
    fits = {"vocab_size": 30522, "max_position_embeddings": 512}
    assert text_fit_problems(fits, {"tokenizer": "bert-base-uncased", "token_length": 40}) == []


@pytest.mark.parametrize(
    ("to", "name", "match"),
    [
        ("fiacli", "x.pth", r"--to fiacli writes \.safetensors, not x\.pth \(a \.pth is"),
        ("fiacli", "x.bin", r"--to fiacli writes \.safetensors"),
        ("released", "x.ckpt", r"--to released writes \.pth or \.pt or \.safetensors"),
    ],
)
def test_a_target_that_does_not_match_the_extension_is_refused(tmp_path, to, name, match):
    src = tmp_path / "src.pth"
    src.write_bytes(b"never read")
    with pytest.raises(UsageError, match=match):
        convert_checkpoint(src, tmp_path / name, to=to)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]


def test_convert_never_replaces_its_input_through_a_hard_link(tmp_path, minimal_model):
    src = tmp_path / "a.safetensors"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "b.safetensors")
    with pytest.raises(UsageError, match="is the input"):
        convert_checkpoint(src, tmp_path / "b.safetensors", to="released", overwrite=True)
    assert src.read_bytes() == b"x"

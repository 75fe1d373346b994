"""`fiacli train`'s options reach TrainConfig by name (fiacli.cli.train.config_overrides): every
option named like a TrainConfig field sets it, the others are the command's own, and an option
that is neither is refused rather than silently dropped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main

from fiacli.cli.train import COMMAND_OPTIONS, config_overrides
from fiacli.training.recipe import TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _train_params() -> list[str]:
    from fiacli.cli import app

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    return [p.name for p in command.params]


def test_every_option_is_a_field_or_a_command_option():
    names = set(_train_params())
    assert not names - set(FIELDS) - COMMAND_OPTIONS, "an option that sets nothing"
    assert names >= COMMAND_OPTIONS, "COMMAND_OPTIONS names an option train does not have"
    assert not COMMAND_OPTIONS & set(FIELDS)


def _sample(name: str):
    """A value of the field's type, unlike its default."""
    default = getattr(TrainConfig(), name)
    if name in ("output", "data_root", "backbone_weights"):
        return Path("some") / name
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    return f"{name}-value"


def test_every_exposed_field_maps_through():
    exposed = [n for n in _train_params() if n in FIELDS]
    assert len(exposed) > 20  # all but the YAML-only ones (model, class_weights, …)
    params = {name: _sample(name) for name in exposed}
    params.update(config=Path("c.yaml"), resume=True, json_out=True)
    overrides = config_overrides(params)
    assert set(overrides) == set(exposed)  # the command's own options are not config values
    for name in exposed:
        value = params[name]
        assert overrides[name] == (str(value) if isinstance(value, Path) else value)


def test_options_not_given_keep_the_recipe():
    assert config_overrides({"epochs": None, "lr": 0.1, "resume": False}) == {"lr": 0.1}


def test_an_option_that_is_not_a_field_is_refused():
    with pytest.raises(TypeError, match="learning_rate"):
        config_overrides({"learning_rate": 0.1, "epochs": 2})


def test_cli_values_arrive_in_the_config(run_cli, monkeypatch, tmp_path):
    import fiacli.training.loop
    from fiacli.core.errors import FiacliError

    seen: list[TrainConfig] = []

    def fake_train(config, *, resume=False):
        seen.append(config)
        raise FiacliError("stopped before training")

    monkeypatch.setattr(fiacli.training.loop, "train", fake_train)
    result = run_cli("train", "--dataset", "synth", "--data-root", str(tmp_path), "-o",
                     str(tmp_path / "run"), "--epochs", "5", "--lr", "0.01", "--parse-mode",
                     "released", "--select-metric", "oiou", "--precision", "fp32",
                     "--train-text-encoder", "--backbone-weights", str(tmp_path / "swin.pth"),
                     "--num-workers", "1")  # fmt: skip
    assert result.exit_code == 1 and "stopped before training" in result.stderr
    (config,) = seen
    assert (config.dataset, config.data_root, config.output) == (
        "synth", str(tmp_path), str(tmp_path / "run"),
    )  # fmt: skip
    assert (config.epochs, config.lr, config.parse_mode) == (5, 0.01, "released")
    assert (config.select_metric, config.precision) == ("oiou", "fp32")
    assert config.freeze_text_encoder is False  # the synth recipe freezes it; the flag wins
    assert config.backbone_weights == str(tmp_path / "swin.pth") and config.num_workers == 1
    assert config.image_size == 96  # not given: the synth recipe's

"""Training recipe: released defaults per dataset, YAML and flag precedence, resume rules."""

from __future__ import annotations

import pytest
import yaml

from fiacli.core.errors import FiacliError, UsageError
from fiacli.training.recipe import load_run_config, resolve_config, save_config


@pytest.mark.parametrize(
    ("dataset", "epochs", "lr", "num_tmem", "tokens", "erasing"),
    [("refsegrs", 60, 5e-5, 1, 20, 0.0), ("rrsisd", 40, 3e-5, 3, 22, 0.2)],
)
def test_released_recipe_per_dataset(dataset, epochs, lr, num_tmem, tokens, erasing):
    cfg = resolve_config(dataset)
    assert (cfg.epochs, cfg.lr, cfg.num_tmem, cfg.token_length) == (epochs, lr, num_tmem, tokens)
    assert cfg.box_erasing == erasing
    # shared by both released recipes (docs/recipe.md): weight decay 0.01 as in the code, batch 8,
    # 480²
    assert (cfg.weight_decay, cfg.batch_size, cfg.image_size) == (0.01, 8, 480)
    assert (cfg.ce_weight, cfg.dice_weight, cfg.class_weights) == (0.9, 0.1, [0.9, 1.1])
    assert cfg.poly_power == 0.9
    assert cfg.parse_mode == "fiacli"
    assert cfg.preset == "fianet-swinb"


def test_synth_recipe_is_cpu_sized():
    cfg = resolve_config("synth")
    assert cfg.preset == "fianet-tiny"
    assert cfg.image_size < 480
    # the released loss and optimiser settings are kept (docs/recipe.md#loss)
    assert (cfg.ce_weight, cfg.dice_weight, cfg.class_weights) == (0.9, 0.1, [0.9, 1.1])
    assert (cfg.batch_size, cfg.weight_decay, cfg.poly_power) == (8, 0.01, 0.9)


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nepochs: 5\nnum-tmem: 2\nmodel: {decoder_dim: 64}\n")
    cfg = resolve_config("rrsisd", config_file=path, overrides={"epochs": 7, "lr": None})
    assert cfg.lr == 1e-4  # from YAML (flag not given)
    assert cfg.epochs == 7  # flag beats YAML
    assert cfg.num_tmem == 2  # dashes accepted
    assert cfg.model == {"decoder_dim": 64}
    assert cfg.token_length == 22  # untouched default


def test_dataset_can_come_from_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: refsegrs\n")
    assert resolve_config(None, config_file=path).epochs == 60


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(UsageError, match="learning_rate"):
        resolve_config("rrsisd", config_file=path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("epochs: many\n", "epochs"), ("batch_size: 2.5\n", "batch_size"), ("[1, 2]\n", "mapping")],
)
def test_bad_yaml_values(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FiacliError, match=match):
        resolve_config("rrsisd", config_file=path)


def test_invalid_values_refused():
    with pytest.raises(UsageError, match="multiple of 32"):
        resolve_config("rrsisd", overrides={"image_size": 100})
    with pytest.raises(UsageError, match="unknown dataset"):
        resolve_config("coco")
    with pytest.raises(UsageError, match="parse mode"):
        resolve_config("rrsisd", overrides={"parse_mode": "fancy"})


def test_missing_config_file():
    with pytest.raises(FiacliError, match="not found"):
        resolve_config("rrsisd", config_file="/nonexistent/c.yaml")


def test_saved_config_round_trips_and_resume_only_changes_runtime_keys(tmp_path):
    cfg = resolve_config("refsegrs", overrides={"lr": 2e-5, "output": str(tmp_path)})
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["lr"] == 2e-5 and saved["dataset"] == "refsegrs"
    again = load_run_config(tmp_path, {"max_steps": 3, "lr": 2e-5})
    assert again == resolve_config(
        "refsegrs", overrides={"lr": 2e-5, "output": str(tmp_path), "max_steps": 3}
    )
    with pytest.raises(UsageError, match="cannot change lr"):
        load_run_config(tmp_path, {"lr": 1e-3})


def test_resume_without_run_folder(tmp_path):
    with pytest.raises(FiacliError, match="cannot resume"):
        load_run_config(tmp_path, {})


def test_new_runs_use_the_released_loss_and_decay_rule_and_old_runs_resume_with_theirs(tmp_path):
    cfg = resolve_config("refsegrs", overrides={"output": str(tmp_path)})
    assert (cfg.dice_reduction, cfg.no_decay) == ("sum", "released")
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["dice_reduction"], saved["no_decay"]  # a run folder of fiacli 0.1.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    old = load_run_config(tmp_path, {})
    assert (old.dice_reduction, old.no_decay) == ("mean", "norm-layers")


@pytest.mark.parametrize(("key", "value"), [("dice_reduction", "max"), ("no_decay", "none")])
def test_unknown_loss_or_decay_choice_is_named(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(UsageError, match=key.replace("_", " ")):
        resolve_config("refsegrs", config_file=path)

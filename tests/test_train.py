"""`fiacli train`: run folder, exact resume, Ctrl-C, NaN loss, disk full, bad input."""

from __future__ import annotations

import errno
import json

import pytest
import torch
import yaml
from train_helpers import TINY_MODEL, tiny_config, weights

from fiacli.core.errors import FiacliError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The reference: 8 steps (2 epochs) without interruption."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = _train(_stochastic(data, out))
    assert result.step == 8
    return out


def _stochastic(data, out, **extra):
    """drop-path, BERT dropout and box erasing on: resuming must restore every RNG stream."""
    return tiny_config(
        data, out, drop_path=0.2, box_erasing=0.5, freeze_text_encoder=False, **extra
    )


def _train(config, resume=False):
    from fiacli.training.loop import train

    return train(config, resume=resume)


def _assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def test_run_folder_holds_config_log_and_checkpoints(data, tmp_path, run_cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": TINY_MODEL, "pretrained": False, "image_size": 32}))
    out = tmp_path / "run"
    result = run_cli(
        "train", "--dataset", "synth", "--data-root", str(data), "-o", str(out),
        "--config", str(cfg), "--epochs", "2", "--batch-size", "4", "--lr", "2e-3", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["step"] == 8 and summary["epoch"] == 2 and summary["stopped"] == "finished"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 2e-3 and saved["epochs"] == 2  # flags
    assert saved["image_size"] == 32 and saved["model"]["embed_dim"] == 8  # YAML
    assert saved["weight_decay"] == 0.01 and saved["parse_mode"] == "fiacli"  # recipe defaults
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all({"loss", "lr", "it_s"} <= r.keys() for r in steps)
    assert all("val_miou" in r for r in records if r["kind"] == "epoch")
    for name in ("last.safetensors", "last.state.pt", "best.safetensors"):
        assert (out / name).is_file()

    from fiacli.models import load_checkpoint
    from fiacli.text.parsing import ParseSettings

    model, meta = load_checkpoint(out / "best.safetensors")
    settings = ParseSettings.from_dict(meta["parse"])
    assert settings.mode == "fiacli" and "storage tank" in settings.classes
    assert settings.token_length == 22
    assert meta["provenance"]["dataset"] == "synth" and meta["provenance"]["epoch"] in (1, 2)
    assert model.config.embed_dim == 8


def test_resume_continues_exactly(data, straight, tmp_path):
    first = _train(_stochastic(data, tmp_path / "b", max_steps=3))  # stops mid-epoch 1
    assert (first.step, first.stopped) == (3, "max_steps")
    state = torch.load(tmp_path / "b" / "last.state.pt", weights_only=True)
    assert state["step"] == 3
    logged = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in logged if r["kind"] == "step"][-1] == 3  # the stop step is logged
    from fiacli.training.recipe import load_run_config

    resumed = _train(load_run_config(tmp_path / "b", {}), resume=True)
    assert resumed.step == 8
    _assert_same_weights(straight / "last.safetensors", tmp_path / "b" / "last.safetensors")
    sa = torch.load(straight / "last.state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "last.state.pt", weights_only=True)
    for key, value in sa["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], sb["optimizer"]["state"][key]["exp_avg_sq"])
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 8
    assert sa["best_metric"] == sb["best_metric"]


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(
    data, straight, tmp_path, run_cli, monkeypatch
):
    from fiacli.training.loop import Trainer

    cfg = _stochastic(data, tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    real = Trainer._optimizer_step
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:  # second step of epoch 2
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, "_optimizer_step", interrupted)
    result = run_cli("train", "--config", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "run"),
                     "--data-root", str(data))  # fmt: skip
    assert result.exit_code == 130
    assert "--resume" in result.stderr
    assert torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)["step"] == 5
    monkeypatch.setattr(Trainer, "_optimizer_step", real)
    result = run_cli("train", "-o", str(tmp_path / "run"), "--resume")
    assert result.exit_code == 0, result.stderr
    _assert_same_weights(straight / "last.safetensors", tmp_path / "run" / "last.safetensors")


def test_nan_loss_names_step_and_batch_and_keeps_last_good_checkpoint(data, tmp_path, run_cli,
                                                                      monkeypatch):  # fmt: skip
    from fiacli.training.losses import SegmentationLoss

    real = SegmentationLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
    cfg = tiny_config(data, tmp_path / "run")
    with pytest.raises(FiacliError, match=r"loss became nan at step 6 \(epoch 2, batch 2") as exc:
        _train(cfg)
    assert "last good checkpoint" in str(exc.value)
    from fiacli.models import read_checkpoint_meta

    assert read_checkpoint_meta(tmp_path / "run" / "last.safetensors")["provenance"]["step"] == 4


def test_disk_full_while_saving_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import fiacli.training.state as state_mod

    cfg = tiny_config(data, tmp_path / "run", epochs=3)
    real_save = torch.save
    calls = {"n": 0}
    snapshot = {}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the state file of epoch 2: weights of epoch 1 must survive
            snapshot["bytes"] = (tmp_path / "run" / "last.safetensors").read_bytes()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(state_mod.torch, "save", full_disk)
    with pytest.raises(FiacliError, match="disk full while saving .*previous checkpoint"):
        _train(cfg)
    run = tmp_path / "run"
    assert (run / "last.safetensors").read_bytes() == snapshot["bytes"]
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["step"] == 4
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]


def test_bad_input_is_one_clear_line(data, tmp_path, run_cli):
    missing = run_cli("train", "--dataset", "synth", "--data-root", str(tmp_path / "nope"),
                      "-o", str(tmp_path / "r1"))  # fmt: skip
    assert missing.exit_code == 1
    # one message (the test console wraps it at 80 columns), no traceback
    assert "not found" in missing.stderr and missing.stderr.count("error:") == 1
    assert "Traceback" not in missing.stderr
    no_root = run_cli("train", "--dataset", "synth", "-o", str(tmp_path / "r2"))
    assert no_root.exit_code == 2 and "--data-root" in no_root.stderr
    extra = str(_yaml(tmp_path, val_split="dev"))
    bad_split = run_cli("train", "--dataset", "synth", "--data-root", str(data), "-o",
                        str(tmp_path / "r3"), "--config", extra)  # fmt: skip
    assert bad_split.exit_code == 1 and "dev" in bad_split.stderr
    no_run = run_cli("train", "-o", str(tmp_path / "r4"), "--resume")
    assert no_run.exit_code == 1 and "cannot resume" in no_run.stderr


def test_existing_run_is_not_overwritten(data, tmp_path):
    _train(tiny_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(FiacliError, match="already holds a run; continue it with --resume"):
        _train(tiny_config(data, tmp_path / "run", epochs=1))


def test_tensorboard_flag(data, tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        installed = False
    else:
        installed = True
    _train(tiny_config(data, tmp_path / "run", epochs=1, tensorboard=True))
    if installed:
        assert any((tmp_path / "run" / "tensorboard").iterdir())
    else:
        assert "pip install tensorboard" in capsys.readouterr().err
        assert (tmp_path / "run" / "metrics.jsonl").is_file()


def _yaml(tmp_path, **values):
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "pretrained": False, "image_size": 32,
                                    "batch_size": 4, **values}))  # fmt: skip
    return path

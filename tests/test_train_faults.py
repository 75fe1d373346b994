"""`fiacli train` under faults: interrupted mid-step or mid-validation (exact resume), bad limits,
a failed start, a full disk while torch saves."""

from __future__ import annotations

import errno

import pytest
import torch
from train_helpers import tiny_config, weights

from fiacli.core.errors import FiacliError, UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(data, out, **extra):
    # dropout, drop-path and box erasing on: every random stream must be restored
    return tiny_config(
        data, out, drop_path=0.2, box_erasing=0.5, freeze_text_encoder=False, **extra
    )


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    from fiacli.training.loop import train

    out = tmp_path_factory.mktemp("straight") / "run"
    assert train(_config(data, out)).step == 8
    return out


def _resume(out):
    from fiacli.training.loop import train
    from fiacli.training.recipe import load_run_config

    return train(load_run_config(out, {}), resume=True)


def _assert_same(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _tracked(path):
    return {k: int(v) for k, v in weights(path).items() if k.endswith("num_batches_tracked")}


def test_interrupted_after_the_forward_pass_resumes_exactly(data, straight, tmp_path, monkeypatch):
    """The interrupted step's forward pass moved BatchNorm statistics and the random streams;
    the saved state must be the last completed step's (5 tracked batches, not 6)."""
    from fiacli.training.loop import train
    from fiacli.training.losses import SegmentationLoss

    real = SegmentationLoss.forward
    calls = {"n": 0}

    def interrupted(self, logits, target):
        calls["n"] += 1
        if calls["n"] == 6:  # step 6's forward has run (BatchNorm updated), its loss has not
            raise KeyboardInterrupt
        return real(self, logits, target)

    monkeypatch.setattr(SegmentationLoss, "forward", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        train(_config(data, out))
    assert "saved a resumable checkpoint at step 5" in info.value.fiacli_note
    assert torch.load(out / "last.state.pt", weights_only=True)["step"] == 5
    tracked = set(_tracked(out / "last.safetensors").values())
    assert tracked == {5}, tracked  # not 6: the interrupted forward pass is undone
    monkeypatch.setattr(SegmentationLoss, "forward", real)
    assert _resume(out).step == 8
    _assert_same(straight / "last.safetensors", out / "last.safetensors")
    assert _tracked(out / "last.safetensors") == _tracked(straight / "last.safetensors")


def test_interrupted_during_validation_validates_that_epoch_on_resume(
    data, straight, tmp_path, monkeypatch
):
    import fiacli.training.evaluate as evaluate_mod
    from fiacli.training.loop import train

    real = evaluate_mod.evaluate_split
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "evaluate_split", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, out))
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["step"] == 4 and state["pending_end_of_epoch"]
    result = _resume(out)
    assert [h["epoch"] for h in result.history if h["kind"] == "epoch"] == [1, 2]
    _assert_same(straight / "last.safetensors", out / "last.safetensors")
    _assert_same(straight / "best.safetensors", out / "best.safetensors")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"max_steps": -3}, "--max-steps must be at least 1"),
        ({"time_budget": 0.0}, "--time-budget must be a positive"),
        ({"time_budget": float("nan")}, "--time-budget must be a positive"),
    ],
)
def test_limits_that_allow_no_training_are_usage_errors(data, tmp_path, extra, match):
    from fiacli.training.loop import train

    with pytest.raises(UsageError, match=match):
        train(tiny_config(data, tmp_path / "run", **extra))
    assert not (tmp_path / "run").exists()


def test_resume_at_max_steps_trains_nothing(data, tmp_path):
    from fiacli.training.loop import train
    from fiacli.training.recipe import load_run_config

    out = tmp_path / "run"
    assert train(tiny_config(data, out, max_steps=2)).step == 2
    before = weights(out / "last.safetensors")
    again = train(load_run_config(out, {"max_steps": 2}), resume=True)
    assert (again.step, again.stopped) == (2, "max_steps")
    after = weights(out / "last.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_failed_start_leaves_no_run_folder(data, tmp_path, monkeypatch):
    import fiacli.training.loop as loop

    def broken(*args, **kwargs):
        raise FiacliError("the dataset cannot be read")

    monkeypatch.setattr(loop, "build_run_data", broken)
    out = tmp_path / "new" / "run"
    with pytest.raises(FiacliError, match="cannot be read"):
        loop.train(tiny_config(data, out))
    assert not out.exists()  # config.yaml was written, then removed with the folder


def test_a_failed_start_in_an_existing_folder_removes_only_its_files(data, tmp_path, monkeypatch):
    import fiacli.training.loop as loop

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(loop, "build_run_data", _raise(FiacliError("no data")))
    with pytest.raises(FiacliError):
        loop.train(tiny_config(data, out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_interrupted_before_the_first_step_leaves_nothing(data, tmp_path, monkeypatch):
    from fiacli.training.loop import Trainer, train

    monkeypatch.setattr(Trainer, "_optimizer_step", _raise(KeyboardInterrupt()))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        train(tiny_config(data, out))
    assert "nothing was saved" in info.value.fiacli_note
    assert not out.exists()


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
        RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
        OSError(errno.EFBIG, "File too large"),
    ],
    ids=["efbig-torch", "enospc-torch", "efbig-os"],
)
def test_a_failing_state_save_is_one_error_and_keeps_the_previous_pair(
    data, tmp_path, monkeypatch, exc
):
    import fiacli.training.state as state_mod
    from fiacli.training.loop import train

    real = torch.save
    calls = {"n": 0}

    def failing(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's state: epoch 1's pair must survive
            raise exc
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(state_mod.torch, "save", failing)
    out = tmp_path / "run"
    with pytest.raises(FiacliError, match="previous checkpoint is unchanged"):
        train(tiny_config(data, out))
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if ".tmp-" in n], names
    assert torch.load(out / "last.state.pt", weights_only=True)["step"] == 4


def test_the_run_folder_may_not_be_the_dataset(data, tmp_path):
    from fiacli.training.loop import train

    with pytest.raises(UsageError, match="is the input"):
        train(tiny_config(data, data))


def test_a_checkpoint_save_removes_what_a_killed_save_left(tmp_path, capsys):
    """A run SIGKILLed (the OOM killer) while saving leaves GB-sized temporaries: the next save
    in that run folder removes them; the checkpoint pair is written as usual."""
    import os
    import subprocess
    import sys

    from fiacli.core.io import owner_tag
    from fiacli.training.state import save_pair

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)  # fmt: skip
    machine = owner_tag().split("-")[0]
    litter = [tmp_path / f".last.tmp-{machine}-{dead}-9.safetensors",
              tmp_path / f".last.state.tmp-{machine}-{dead}-9.pt"]  # fmt: skip
    for p in litter:
        p.write_bytes(b"half a checkpoint")
    save_pair(
        tmp_path, "last", lambda path, save_id: path.write_bytes(save_id.encode()), {"step": 1}
    )
    assert not any(p.exists() for p in litter)
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors", "last.state.pt"]
    assert "killed fiacli runs left" in capsys.readouterr().err

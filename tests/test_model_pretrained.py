"""Pretrained initialisation: local files work offline; hub downloads fail fast, with a hint."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from fiacli.core.errors import FiacliError
from fiacli.models import create_model
from fiacli.models.pretrained import offline_text_encoder_folder

SMALL = {"depths": (1, 1, 1, 1), "image_size": 64}


@pytest.fixture
def no_hub(monkeypatch):
    """A hub that cannot be reached and no cached file, whatever the machine's network."""
    monkeypatch.setenv("HF_HOME", "/nonexistent-fiacli-hf-home")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-fiacli-hf-home/hub")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-fiacli-hf-home/hub")


@pytest.mark.parametrize("offline_env", [True, False])
def test_swinb_pretrained_fails_fast_without_hub(no_hub, monkeypatch, offline_env: bool) -> None:
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolves (RFC 6761)
    start = time.perf_counter()
    with pytest.raises(FiacliError, match="--backbone-weights") as info:
        create_model("fianet-swinb", pretrained=True)
    assert time.perf_counter() - start < 5  # not huggingface_hub's tens of seconds of retries
    assert ("HF_HUB_OFFLINE" in str(info.value)) == offline_env
    assert ("unreachable" in str(info.value)) != offline_env


def test_hub_text_encoder_fails_fast_before_building(no_hub, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FiacliError, match="--text-encoder"):
        create_model("fianet-tiny", text_encoder="bert-base-uncased", **SMALL)
    assert time.perf_counter() - start < 5
    with pytest.raises(FiacliError, match="not found"):
        create_model("fianet-tiny", text_encoder=str(tmp_path / "no-such-bert"), **SMALL)


def test_local_text_encoder_folder_sets_width_and_weights() -> None:
    folder = offline_text_encoder_folder()
    model = create_model("fianet-tiny", text_encoder=str(folder), pretrained=False, **SMALL)
    assert model.config.text_dim == 384  # read from the folder's config.json
    assert model.fiam[0].context_align.attention.key.weight.shape[1] == 384
    from safetensors.torch import load_file

    reference = load_file(str(folder / "model.safetensors"))
    key = "encoder.layer.5.output.dense.weight"
    stored = reference.get(key, reference.get(f"bert.{key}"))
    torch.testing.assert_close(model.text_encoder.bert.state_dict()[key], stored)


def test_tiny_loads_offline_minilm_by_default_and_random_on_request() -> None:
    pretrained = create_model("fianet-tiny", **SMALL)
    random = create_model("fianet-tiny", pretrained=False, **SMALL)
    key = "embeddings.word_embeddings.weight"
    a = pretrained.text_encoder.bert.state_dict()[key]
    b = random.text_encoder.bert.state_dict()[key]
    assert not torch.equal(a, b)
    assert pretrained.config.freeze_text_encoder


def _timm_tiny_swin():
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        embed_dim=32,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8),
        window_size=8,
        img_size=64,
        strict_img_size=False,
        always_partition=True,  # full 8×8 windows, as FIANet uses them
    )


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_backbone_weights_from_local_file(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(3)
    state = _timm_tiny_swin().state_dict()
    if layout == "timm":
        path = tmp_path / "swin.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # Microsoft's release: {"model": ...}, downsample at the end of stage i
        renamed = {
            re.sub(
                r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k
            ): v
            for k, v in state.items()
        }
        path = tmp_path / "swin.pth"
        torch.save({"model": renamed}, path)
    model = create_model("fianet-tiny", backbone_weights=path, pretrained=False, **SMALL)
    ours = model.backbone.state_dict()
    assert torch.equal(
        ours["layers.1.downsample.reduction.weight"], state["layers.1.downsample.reduction.weight"]
    )
    for key in ("patch_embed.proj.weight", "layers.3.blocks.0.attn.relative_position_bias_table"):
        assert torch.equal(ours[key], state[key]), key

    with pytest.raises(FiacliError, match="not found"):
        create_model("fianet-tiny", backbone_weights=tmp_path / "nope.pth", **SMALL)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}, str(wrong))
    with pytest.raises(FiacliError, match="could not load the Swin backbone"):
        create_model("fianet-tiny", backbone_weights=wrong, pretrained=False, **SMALL)

"""Parity with the authors' released FIANet code on ../shared/fixtures/official_parity.

The fixture's weights are converted with the code path of ``fiacli convert`` (``read_released`` +
``build_from_released``), then fiacli's forward runs on the fixture's inputs (fp32, CPU) and every
stored tensor is compared: ≤ 5e-4 on the output and decoder logits, ≤ 2e-3 on intermediates (the
fixture README's thresholds, about 10× the released code's own run-to-run noise).
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformerBlock

from fiacli.models import FIANet, TextBatch
from fiacli.models.convert import build_from_released, read_released
from fiacli.models.swin import ReleasedOrderSwinBlock

OUTPUT_TOL = 5e-4
INTERMEDIATE_TOL = 2e-3


def _fixture(name: str):
    return shared_path("fixtures", "official_parity", name)


@pytest.fixture(scope="module")
def converted() -> FIANet:
    released = read_released(_fixture("weights.safetensors"))
    model, meta, _ = build_from_released(released)
    assert meta["parse"]["mode"] == "released"
    return model.eval()


@pytest.fixture(scope="module")
def fixture_io() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(str(_fixture("inputs.safetensors"))), load_file(
        str(_fixture("outputs.safetensors"))
    )


def _as_map(tokens: torch.Tensor, side: int) -> torch.Tensor:
    B, L, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, side, L // side)


def run_with_intermediates(
    model: FIANet, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """fiacli's forward on the fixture inputs; intermediates collected by forward hooks."""
    got: dict[str, torch.Tensor] = {}
    sides = [inputs["image"].shape[-1] // 4 // 2**i for i in range(4)]

    def keep(name, fn=lambda o: o):
        return lambda module, args, out: got.__setitem__(name, fn(out))

    hooks = [
        model.backbone.layers[3].register_forward_hook(
            keep("stage3.swin_out", lambda o: o.permute(0, 3, 1, 2))
        ),
        model.tmem.down_channel.register_forward_hook(keep("tmem.down_out")),
        model.tmem.bn.register_forward_hook(keep("tmem.bn_out")),
        model.decoder.register_forward_hook(keep("decoder.logits")),
    ]
    for k, block in enumerate(model.tmem.blocks):
        hooks.append(
            block.register_forward_hook(keep(f"tmem.block{k}.out", lambda o: _as_map(o, sides[3])))
        )
    for i, side in enumerate(sides):
        fiam = model.fiam[i]
        hooks += [
            fiam.register_forward_hook(keep(f"stage{i}.fused", lambda o, s=side: _as_map(o[0], s))),
            model.out_norms[i].register_forward_hook(
                keep(f"stage{i}.pre_tmem", lambda o, s=side: _as_map(o, s))
            ),
            model.tmem.gates[i].register_forward_hook(keep(f"stage{i}.tmem_out")),
            fiam.channel_modulation.register_forward_hook(keep(f"stage{i}.channel_weights")),
            fiam.opab.spatial_weight.register_forward_hook(keep(f"stage{i}.spatial_map")),
        ]
    text = TextBatch(inputs["input_ids"], inputs["l_mask"], inputs["t_mask"], inputs["p_mask"])
    try:
        with torch.no_grad():
            feats = model.encode_text(text)
            got["output"] = model(inputs["image"], feats)
    finally:
        for hook in hooks:
            hook.remove()
    got["text.context.last_hidden_state"] = feats.context
    got["text.object.last_hidden_state"] = feats.object
    got["text.position.last_hidden_state"] = feats.position
    return got


def _compare(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    diffs = {}
    for key, ref in expected.items():
        match = re.fullmatch(r"(.+)\.sub(\d+)", key)
        name, step = (match[1], int(match[2])) if match else (key, 1)
        assert name in got, f"no fiacli tensor collected for fixture tensor {key}"
        ours = got[name][..., ::step, ::step]
        assert ours.shape == ref.shape, f"{key}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        diffs[key] = (ours - ref).abs().max().item()
    return diffs


def test_converted_fixture_matches_released_forward(converted: FIANet, fixture_io) -> None:
    inputs, expected = fixture_io
    diffs = _compare(run_with_intermediates(converted, inputs), expected)
    assert len(diffs) == len(expected) == 29
    too_far = {
        k: d
        for k, d in diffs.items()
        if d > (OUTPUT_TOL if k in ("output", "decoder.logits") else INTERMEDIATE_TOL)
    }
    assert not too_far, f"beyond tolerance: {too_far}"


def test_timm_padding_order_would_break_parity(converted: FIANet, fixture_io) -> None:
    """The check above is sensitive to the released padding order (fixture README, behaviour 1)."""
    inputs, expected = fixture_io
    blocks = [b for stage in converted.backbone.layers for b in stage.blocks]
    for block in blocks:
        block.__class__ = SwinTransformerBlock
    try:
        diffs = _compare(run_with_intermediates(converted, inputs), expected)
    finally:
        for block in blocks:
            block.__class__ = ReleasedOrderSwinBlock
    # stages 0-2 need no padding or pad by exactly the shift at 480²: timm's order agrees there
    assert diffs["stage2.fused"] <= INTERMEDIATE_TOL
    assert diffs["stage3.swin_out"] > 0.5 and diffs["output"] > 0.5

"""FIANet architecture: shapes, text reuse, ablations, parameter counts, Swin padding order."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import shared_path
from timm.models.swin_transformer import SwinTransformerBlock

from fiacli.models import (
    FIANet,
    FIANetConfig,
    TextBatch,
    count_parameters,
    create_model,
    minimal_config,
)
from fiacli.models.swin import ReleasedOrderSwinBlock, sincos_position_embedding

torch.manual_seed(0)


def text_batch(batch: int = 2, n: int = 8) -> TextBatch:
    ids = torch.randint(1000, 2000, (batch, n))
    ids[:, 0], ids[:, -1] = 101, 102
    context = torch.ones(batch, n, dtype=torch.long)
    context[1:, -2:] = 0
    obj = torch.zeros(batch, n, dtype=torch.long)
    obj[0, 2:4] = 1  # row 1 keeps an empty object mask, as when no class word is found
    pos = context.clone()
    pos[0, :5] = 0
    return TextBatch(ids, context, obj, pos)


@pytest.fixture(scope="module")
def model() -> FIANet:
    return FIANet(minimal_config()).eval()


def test_forward_returns_logits_at_input_size(model: FIANet) -> None:
    for size in (64, 70):  # 70: not a multiple of the patch or window, both get padded
        image = torch.randn(2, 3, size, size + 6)
        with torch.no_grad():
            logits = model(image, text_batch())
        assert logits.shape == (2, 2, size, size + 6)
        assert torch.isfinite(logits).all()


def test_text_features_reused_match_encoding_per_call(model: FIANet) -> None:
    text = text_batch()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        direct = model(image, text)
        feats = model.encode_text(text)
        cached = model(image, feats)
        # one expression broadcast over a batch equals running each image with it
        single = model(image, feats[0])
        first = model(image[:1], feats[0])
        second = model(image[1:], feats[0])
    torch.testing.assert_close(direct, cached)
    torch.testing.assert_close(single, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    assert feats.context.shape == (2, 8, 32) and feats[1].context.shape == (1, 8, 32)


def test_three_text_passes_match_separate_bert_calls(model: FIANet) -> None:
    text = text_batch()
    bert = model.text_encoder.bert
    with torch.no_grad():
        feats = model.encode_text(text)
        context = bert(input_ids=text.input_ids, attention_mask=text.context_mask)
        position = bert(input_ids=text.input_ids, attention_mask=text.position_mask)
        # an all-zero mask behaves like the released HF 3.0.2: an unmasked pass
        unmasked = bert(input_ids=text.input_ids, attention_mask=torch.ones_like(text.object_mask))
    torch.testing.assert_close(feats.context, context.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.position, position.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.object[1], unmasked.last_hidden_state[1], atol=1e-5, rtol=1e-5)


def test_text_batch_from_parsed_stacks_tuples() -> None:
    parsed = [
        SimpleNamespace(
            input_ids=(101, 7, 102),
            context_mask=(1, 1, 1),
            object_mask=(0, 1, 0),
            position_mask=(1, 1, 1),
        ),
        SimpleNamespace(
            input_ids=(101, 9, 0),
            context_mask=(1, 1, 0),
            object_mask=(0, 0, 0),
            position_mask=(1, 1, 0),
        ),
    ]
    batch = TextBatch.from_parsed(parsed)
    assert batch.input_ids.tolist() == [[101, 7, 102], [101, 9, 0]]
    assert batch.object_mask.dtype == torch.long and batch.object_mask.tolist()[0] == [0, 1, 0]
    assert len(batch) == 2 and batch[1].context_mask.tolist() == [[1, 1, 0]]


def test_preprocess_normalises_uint8_chw(model: FIANet) -> None:
    chip = torch.full((3, 4, 5), 255, dtype=torch.uint8)
    chip[1] = 0
    x = model.preprocess(chip)
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert x[0, 1, 0, 0].item() == pytest.approx((0 - 0.456) / 0.224, rel=1e-6)
    assert "pixel_mean" not in model.state_dict()  # the config owns them, not the weights


ABLATIONS = {
    "no_fiam": {"fiam": False},
    "no_tmem": {"tmem": False},
    "no_channel_modulation": {"channel_modulation": False},
    "no_object_branch": {"object_branch": False, "spatial_branch": False},
    "no_spatial_branch": {"spatial_branch": False},
    "lavt_baseline": {"fiam": False, "tmem": False},
    "num_tmem_3": {"num_tmem": 3},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_switches_build_and_run(name: str) -> None:
    full = FIANet(minimal_config()).eval()
    model = FIANet(minimal_config().replace(**ABLATIONS[name])).eval()
    keys = set(model.state_dict())
    has = {
        "channel_modulation": any(".channel_modulation." in k for k in keys),
        "object": any(".opab.object_attn." in k for k in keys),
        "spatial": any(".opab.position_attn." in k for k in keys),
        "tmem": any(k.startswith("tmem.") for k in keys),
    }
    flags = ABLATIONS[name]
    fiam = flags.get("fiam", True)
    assert has["channel_modulation"] == (fiam and flags.get("channel_modulation", True))
    assert has["object"] == (fiam and flags.get("object_branch", True))
    assert has["spatial"] == (fiam and flags.get("spatial_branch", True))
    assert has["tmem"] == flags.get("tmem", True)
    blocks = {k.split(".")[2] for k in keys if k.startswith("tmem.blocks.")}
    assert len(blocks) == (flags.get("num_tmem", 1) if has["tmem"] else 0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), text_batch(1))
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()
    if name != "num_tmem_3":
        assert count_parameters(model) < count_parameters(full)


def test_spatial_branch_without_object_branch_is_refused() -> None:
    with pytest.raises(ValueError, match="needs object_branch"):
        minimal_config().replace(object_branch=False)


def test_frozen_text_encoder_has_no_gradient_and_no_dropout() -> None:
    model = FIANet(minimal_config().replace(freeze_text_encoder=True)).train()
    assert not model.text_encoder.bert.training
    image = torch.randn(2, 3, 64, 64)
    model(image, text_batch()).logsumexp(1).mean().backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.backbone.patch_embed.proj.weight.grad is not None
    assert model.fiam[0].context_gate.fc1.weight.grad is not None


def test_trainable_text_encoder_gets_gradient() -> None:
    model = FIANet(minimal_config()).train()
    model(torch.randn(2, 3, 64, 64), text_batch()).mean().backward()
    grad = model.text_encoder.bert.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_sincos_code_depends_on_the_normalised_position_only() -> None:
    small, large = sincos_position_embedding(3, 3, 16), sincos_position_embedding(9, 9, 16)
    assert small.shape == (3, 3, 16)
    # token (i, j) of a 3×3 map and token (3i+1, 3j+1) of a 9×9 map sit at the same (u_y, u_x)
    torch.testing.assert_close(small, large[1::3, 1::3], atol=1e-6, rtol=0)
    # by hand: 2 rows, lowest frequency π; row 0 is at u_y = 0.25, column 1 of 4 at u_x = 0.375
    code = sincos_position_embedding(2, 4, 8)  # channels: sin_y(2) cos_y(2) sin_x(2) cos_x(2)
    assert code[0, 1, 0].item() == pytest.approx(math.sin(math.pi * 0.25), abs=1e-6)
    assert code[0, 1, 2].item() == pytest.approx(math.cos(math.pi * 0.25), abs=1e-6)
    assert code[0, 1, 6].item() == pytest.approx(math.cos(math.pi * 0.375), abs=1e-6)
    assert code[0, 1, 7].item() == pytest.approx(math.cos(16 * math.pi * 0.375), abs=1e-6)
    # every token of a map has its own code
    flat = large.reshape(81, 16)
    assert torch.cdist(flat, flat).add(torch.eye(81)).min() > 0.1
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding(3, 3, 6)


@pytest.mark.parametrize(("code", "varies"), [("none", False), ("sincos", True)])
def test_abs_pos_embed_tells_the_first_fusion_where_each_pixel_is(code: str, varies: bool) -> None:
    """Released (no code): a uniform image gives every stage-1 token the same features, so no
    phrase can pick "the left" one; with the sin-cos code the tokens differ by place."""
    model = FIANet(minimal_config().replace(abs_pos_embed=code)).eval()
    seen = []
    model.fiam[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(torch.full((1, 3, 64, 64), 0.3), text_batch(1))
    tokens = seen[0][0]  # (L, C): the Swin stage-1 output the FIAM fuses
    assert (tokens.std(dim=0).max() > 1e-3) == varies
    # no parameters: the same keys either way (released conversion and key mapping unchanged)
    assert set(model.state_dict()) == set(FIANet(minimal_config()).state_dict())


def test_abs_pos_embed_defaults_and_validation() -> None:
    assert FIANetConfig().abs_pos_embed == "none"  # the released model
    assert create_model("fianet-tiny", device="meta").config.abs_pos_embed == "sincos"
    old = minimal_config().to_dict()
    del old["abs_pos_embed"]  # a checkpoint written before the field existed
    assert FIANetConfig.from_dict(old).abs_pos_embed == "none"
    with pytest.raises(ValueError, match="abs_pos_embed must be one of"):
        minimal_config().replace(abs_pos_embed="learned")
    with pytest.raises(ValueError, match="divisible by 4"):
        minimal_config().replace(abs_pos_embed="sincos", embed_dim=18, num_heads=(1, 1, 1, 1))


def _key_list_params(path) -> tuple[int, int]:
    """Parameter elements listed in a released key/shape file (buffers excluded)."""
    total = go = 0
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")[:2]
        if re.search(r"running_|num_batches_tracked|relative_position_index", key):
            continue
        n = math.prod(int(s) for s in re.findall(r"\d+", shape))
        total += n
        go += n if "go_embedding" in key else 0
    return total, go


@pytest.mark.parametrize(("num_tmem", "millions"), [(1, 251.9), (3, 256.2)])
def test_swinb_parameter_count_equals_released(num_tmem: int, millions: float) -> None:
    model = create_model("fianet-swinb", num_tmem=num_tmem, device="meta", pretrained=False)
    count = count_parameters(model)
    assert round(count / 1e6, 1) == millions  # the released-implementation figures
    released, go = _key_list_params(
        shared_path("fixtures", "official_parity", f"fullsize_keys_num_tmem{num_tmem}.txt")
    )
    assert count == released
    # dropping the unused go_embedding removes exactly its C×C weights per stage
    lean = create_model(
        "fianet-swinb", num_tmem=num_tmem, go_embedding=False, device="meta", pretrained=False
    )
    assert count - count_parameters(lean) == go == sum(c * c for c in (128, 256, 512, 1024))
    assert count_parameters(model, exclude=("text_encoder",)) == count - 108_891_648


def _block(cls, size: int, shift: int) -> SwinTransformerBlock:
    torch.manual_seed(1)
    block = SwinTransformerBlock(
        dim=8,
        input_resolution=(size, size),
        num_heads=2,
        window_size=4,
        shift_size=shift,
        always_partition=True,
        dynamic_mask=True,
    )
    with torch.no_grad():
        block.attn.qkv.bias.normal_()  # padded zeros then have non-zero keys, as released
    block.__class__ = cls
    return block.eval()


@pytest.mark.parametrize(
    ("size", "same"),
    [(8, True), (6, True), (5, False)],  # pad 0, pad == shift (2), pad 3 != shift
)
def test_released_padding_order_differs_from_timm_only_when_pad_differs_from_shift(
    size: int, same: bool
) -> None:
    x = torch.randn(2, size, size, 8)
    with torch.no_grad():
        released = _block(ReleasedOrderSwinBlock, size, 2)(x)
        timm_order = _block(SwinTransformerBlock, size, 2)(x)
    assert torch.allclose(released, timm_order, atol=1e-5) == same

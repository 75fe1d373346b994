"""Optimiser groups and poly schedule of the released recipe (docs/recipe.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from fiacli.training.optim import build_optimizer, freeze_for_training, poly_scheduler


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))


class _FakeFIANet(nn.Module):
    """Names and module types shaped like FIANet's: Swin block, FIAM, decoder BN, BERT."""

    def __init__(self):
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.block = _Block()
        self.go_embedding = nn.Linear(8, 8)
        self.inorm = nn.InstanceNorm1d(8, affine=True)
        self.decoder_bn = nn.BatchNorm2d(8)
        self.classifier = nn.Conv2d(8, 2, 1)
        cfg = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=32,
        )
        self.text_encoder = BertModel(cfg, add_pooling_layer=False)


def _groups(opt):
    decay, no_decay = opt.param_groups
    return {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}, decay, no_decay


def _params_of(modules, kind) -> set[int]:
    return {id(p) for m in modules for sub in m.modules() if isinstance(sub, kind)
            for p in sub.parameters(recurse=False)}  # fmt: skip


def test_weight_decay_follows_the_released_rule_on_fianet():
    """train.py exempts backbone parameters named *norm*, *absolute_pos_embed* or
    *relative_position_bias_table*; the decoder's and TMEM's BatchNorms and BERT's LayerNorms
    decay (docs/recipe.md, "Which parameters train")."""
    from fiacli.models.fianet import FIANet
    from fiacli.models.presets import minimal_config
    from fiacli.models.text_encoder import BERT_BASE_UNCASED

    text = {**BERT_BASE_UNCASED, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 64}  # fmt: skip
    model = FIANet(minimal_config(text_config=text))  # layer 0 of 3 trains: its LayerNorms decay
    freeze_for_training(model)
    decay, no_decay, g_decay, g_no_decay = _groups(build_optimizer(model, 3e-5, 0.01))
    assert g_decay["weight_decay"] == 0.01 and g_no_decay["weight_decay"] == 0.0
    swin_norms = _params_of([model.backbone, model.out_norms], nn.LayerNorm)
    tmem_norms = _params_of(model.tmem.blocks, nn.LayerNorm)
    tables = {
        id(p) for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")
    }
    assert swin_norms and tmem_norms and tables
    assert swin_norms | tmem_norms | tables == no_decay
    batch_norms = _params_of([model.decoder, model.tmem], nn.BatchNorm2d)
    text_norms = _params_of([model.text_encoder], nn.LayerNorm)
    assert batch_norms and text_norms & decay
    assert batch_norms <= decay and not text_norms & no_decay
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == decay | no_decay and not decay & no_decay


def test_norm_layers_rule_exempts_every_normalisation_layer():
    """fiacli 0.1.0's rule, kept for runs started with it: every norm layer by type."""
    model = _FakeFIANet()
    frozen = freeze_for_training(model)
    opt = build_optimizer(model, lr=3e-5, weight_decay=0.01, rule="norm-layers")
    decay, no_decay, g_decay, g_no_decay = _groups(opt)
    assert g_decay["weight_decay"] == 0.01 and g_no_decay["weight_decay"] == 0.0
    for p in (
        model.block.norm1.weight,
        model.block.norm1.bias,
        model.decoder_bn.weight,
        model.inorm.weight,
        model.absolute_pos_embed,
        model.block.relative_position_bias_table,
    ):
        assert id(p) in no_decay
    for p in (
        model.block.fc.weight,
        model.classifier.weight,
        model.text_encoder.encoder.layer[0].attention.self.query.weight,
    ):
        assert id(p) in decay
    text = model.text_encoder
    # embeddings and the last two layers are outside the optimiser; layers 0-1 inside
    outside = [
        *text.embeddings.parameters(),
        *text.encoder.layer[2].parameters(),
        *text.encoder.layer[3].parameters(),
        *model.go_embedding.parameters(),
    ]
    for p in outside:
        assert id(p) not in decay | no_decay and not p.requires_grad
    for p in text.encoder.layer[1].parameters():
        assert id(p) in decay | no_decay
    assert (
        "go_embedding.weight" in frozen
        and "text_encoder.encoder.layer.3.output.dense.weight" in frozen
    )
    assert not any(".layer.1." in n for n in frozen)
    # every trainable parameter is in exactly one group
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == decay | no_decay and not decay & no_decay


def test_frozen_text_encoder_leaves_no_text_parameter_in_the_optimiser():
    model = _FakeFIANet()
    freeze_for_training(model, freeze_text_encoder=True)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.01, rule="norm-layers")
    decay, no_decay, *_ = _groups(opt)
    assert not {id(p) for p in model.text_encoder.parameters()} & (decay | no_decay)


def test_frozen_parameters_do_not_move_during_a_step():
    torch.manual_seed(0)
    model = _FakeFIANet()
    freeze_for_training(model)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.01)
    before = model.text_encoder.encoder.layer[3].output.dense.weight.clone()
    ids = torch.randint(0, 50, (2, 5))
    out = model.text_encoder(input_ids=ids).last_hidden_state.sum()
    out.backward()
    opt.step()
    assert torch.equal(before, model.text_encoder.encoder.layer[3].output.dense.weight)
    assert model.text_encoder.encoder.layer[0].attention.self.query.weight.grad is not None


def test_poly_schedule_is_stepped_per_iteration():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = poly_scheduler(opt, total_iters=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # hand values: 0.1·(1 − it/10)^0.9
    expected = [0.1 * (1 - it / 10) ** 0.9 for it in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert opt.param_groups[0]["lr"] == 0.0
    assert lrs[5] == pytest.approx(0.1 * 0.5**0.9)


def test_freeze_unused_finds_dead_parameters_without_side_effects():
    from fiacli.training.optim import freeze_unused

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.5)
            self.dead = nn.Linear(4, 4)  # like the last stage's fused output: computed nowhere

        def forward(self, x):
            return self.drop(self.bn(self.conv(x)))

    net = Net().train()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    rng = torch.get_rng_state()
    stats = net.bn.running_mean.clone()
    names = freeze_unused(net, x)
    assert names == ["dead.weight", "dead.bias"]
    assert not net.dead.weight.requires_grad and net.conv.weight.requires_grad
    assert net.training and net.conv.weight.grad is None
    assert torch.equal(net.bn.running_mean, stats)  # probe ran in eval mode
    assert torch.equal(torch.get_rng_state(), rng)

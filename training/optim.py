"""Optimiser and schedule of the released recipe (docs/recipe.md): AdamW groups and poly decay per
iteration.

Which parameters train, as released:
- no weight decay on the backbone parameters whose *released* name contains ``norm``,
  ``absolute_pos_embed`` or ``relative_position_bias_table`` (``train.py`` tests the names;
  fiacli's own names differ, so each is mapped to the released one with
  :func:`fiacli.models.convert.released_key` first). Everything else decays, the TMEM and decoder
  BatchNorms and BERT's LayerNorms included. ``rule="norm-layers"`` (fiacli 0.1.0) exempts every
  normalisation layer by type instead;
- BERT's embeddings and its last two layers are **not in the optimiser**. fiacli also sets
  ``requires_grad=False`` on them: the weights stay where they were either way, and autograd then
  skips their gradients (and DDP does not wait for them);
- parameters that forward never uses are frozen too, so that DDP needs no
  ``find_unused_parameters`` (an extra graph walk every step): the released ``go_embedding``, and,
  found by :func:`freeze_unused` with one probe pass, the gated fusion of the *last* stage's FIAM
  (its fused output would feed a fifth stage that does not exist; the decoder reads ``x_res``).
  Without DDP they would get no gradient either, so AdamW would leave them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fiacli.training.recipe import NO_DECAY_RULES, NoDecayRule

NO_DECAY_NAMES = ("absolute_pos_embed", "relative_position_bias_table")
RELEASED_NO_DECAY_NAMES = ("norm", *NO_DECAY_NAMES)  # substrings of released backbone names
NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
# never used by FIANet's forward (docs/released-forward.md), kept only so released checkpoints
# map key for key
UNUSED_IN_FORWARD = ("go_embedding",)


def find_text_encoder(model: nn.Module) -> nn.Module | None:
    """The BERT-like encoder inside ``model``: the first module with ``embeddings`` and
    ``encoder.layer`` (HF's BertModel layout), or None when the model has none."""
    for module in model.modules():
        encoder = getattr(module, "encoder", None)
        if hasattr(module, "embeddings") and isinstance(getattr(encoder, "layer", None), nn.Module):
            return module
    return None


def freeze_for_training(model: nn.Module, *, freeze_text_encoder: bool = False) -> list[str]:
    """Set ``requires_grad=False`` on what the recipe never updates; returns the frozen names."""
    frozen: set[int] = set()
    text = find_text_encoder(model)
    if text is not None:
        if freeze_text_encoder:
            parts: Iterable[nn.Module] = [text]
        else:
            layers = list(text.encoder.layer)
            parts = [text.embeddings, *layers[-2:]]
            pooler = getattr(text, "pooler", None)
            if isinstance(pooler, nn.Module):
                parts = [*parts, pooler]  # BERT's pooler is never used (no pooled output)
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(False)
                frozen.add(id(p))
    names = []
    for name, p in model.named_parameters():
        if any(u in name.split(".") for u in UNUSED_IN_FORWARD):
            p.requires_grad_(False)
            frozen.add(id(p))
        if id(p) in frozen:
            names.append(name)
    return names


def freeze_unused(model: nn.Module, *inputs: object) -> list[str]:
    """Freeze trainable parameters that get no gradient from ``model(*inputs)``; their names.

    The probe runs in eval mode (no BatchNorm statistics updated, no dropout) and leaves the
    global RNG untouched, so training afterwards is exactly as without the probe.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            out = model(*inputs)
            out = out if torch.is_tensor(out) else out.logits
            out.float().sum().backward()
        names = []
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is None:
                p.requires_grad_(False)
                names.append(name)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return names


def released_no_decay(name: str) -> bool:
    """The released rule (``train.py:262-268``) for fiacli's parameter ``name``.

    A name without a released counterpart (a model other than FIANet) is tested as it is."""
    from fiacli.models.convert import released_key

    try:
        key = released_key(name)
    except KeyError:
        return any(n in name for n in RELEASED_NO_DECAY_NAMES)
    return key.startswith("backbone.") and any(n in key for n in RELEASED_NO_DECAY_NAMES)


def param_groups(
    model: nn.Module, weight_decay: float, rule: NoDecayRule = "released"
) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"unknown no-decay rule {rule!r}; use {' or '.join(NO_DECAY_RULES)}")
    norm_layer: set[int] = set()
    if rule == "norm-layers":
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                norm_layer.update(id(p) for p in module.parameters(recurse=False))
    decay_params, no_decay_params = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if rule == "released":
            exempt = released_no_decay(name)
        else:
            exempt = id(p) in norm_layer or any(n in name for n in NO_DECAY_NAMES)
        (no_decay_params if exempt else decay_params).append(p)
    return [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": no_decay_params, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, rule: NoDecayRule = "released"
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (call :func:`freeze_for_training` first)."""
    groups = param_groups(model, weight_decay, rule)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def poly_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9
) -> torch.optim.lr_scheduler.PolynomialLR:
    """``lr·(1 − it/total)^power``, to be stepped once per optimiser step (not per epoch)."""
    return torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=max(1, total_iters), power=power
    )

"""The training loss as released (docs/recipe.md#loss): ``0.9 · weighted CE + 0.1 · Dice``.

- Cross-entropy over the two logits with class weights [0.9, 1.1] (background, object), torch's
  weighted mean: Σ w[y]·nll / Σ w[y] over all pixels of the batch.
- Dice as ``loss/loss.py``'s ``DiceLoss``: softmax over the 2 logits, one-hot target, and per
  sample *and* per class ``dice = (2·Σ p·t + s) / (Σ p + Σ t + s)`` with s = 1e-6 over the
  pixels; the loss is ``Σ (1 − dice)`` over the B×2 (sample, class) pairs (``DiceLoss``'s default
  ``reduction="sum"``), so at batch 8 the Dice term weighs 16× a mean of the same terms.
  ``reduction="mean"`` is fiacli 0.1.0's reading. Both classes count, so the background term
  keeps an empty-target sample from producing a zero-gradient 0/0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fiacli.training.recipe import DICE_REDUCTIONS, DiceReduction


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-6,
    reduction: DiceReduction = "sum",
) -> torch.Tensor:
    """Soft Dice loss of (B, C, H, W) logits against a (B, H, W) integer target: ``1 − dice``
    per (sample, class) pair, summed (as released) or averaged."""
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(
            f"unknown Dice reduction {reduction!r}; use {' or '.join(DICE_REDUCTIONS)}"
        )
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes=logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(2, 3))
    total = probs.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
    per_pair = 1 - (2 * inter + smooth) / (total + smooth)
    return per_pair.sum() if reduction == "sum" else per_pair.mean()


class SegmentationLoss(nn.Module):
    """``ce_weight · CE(class_weights) + dice_weight · Dice(dice_reduction)`` on (B, 2, H, W)
    logits.

    The target is a (B, H, W) mask (bool or 0/1). Computed in fp32 even under autocast.
    """

    def __init__(
        self,
        ce_weight: float = 0.9,
        dice_weight: float = 0.1,
        class_weights: Sequence[float] = (0.9, 1.1),
        smooth: float = 1e-6,
        dice_reduction: DiceReduction = "sum",
    ):
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.dice_reduction = dice_reduction
        self.register_buffer(
            "class_weights",
            torch.tensor(list(class_weights), dtype=torch.float32),
            persistent=False,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (B, C, H, W) and target (B, H, W), got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        target = target.long()
        ce = F.cross_entropy(logits.float(), target, weight=self.class_weights)
        return self.ce_weight * ce + self.dice_weight * dice_loss(
            logits, target, self.smooth, self.dice_reduction
        )

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, dice_weight={self.dice_weight}, "
            f"class_weights={self.class_weights.tolist()}, smooth={self.smooth}, "
            f"dice_reduction={self.dice_reduction!r}"
        )

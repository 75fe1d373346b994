"""0.9·weighted CE + 0.1·Dice (summed over (sample, class) pairs, as released) against values
computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fiacli.training.losses import SegmentationLoss, dice_loss

# Two pixels. Pixel a: logits (0, 0) -> softmax (1/2, 1/2), target 0.
# Pixel b: logits (0, ln 3) -> softmax (1/4, 3/4), target 1.
LOGITS = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # (B=1, C=2, H=1, W=2)
TARGET = torch.tensor([[[0, 1]]])  # (1, 1, 2)

# weighted CE = (0.9·(−ln 1/2) + 1.1·(−ln 3/4)) / (0.9 + 1.1)
CE = (0.9 * math.log(2) + 1.1 * math.log(4 / 3)) / 2.0
# Dice per class, s = 1e-6:
#   background: probs (1/2, 1/4), one-hot (1, 0): (2·1/2 + s) / (3/4 + 1 + s) = 1 / 1.75
#   object:     probs (1/2, 3/4), one-hot (0, 1): (2·3/4 + s) / (5/4 + 1 + s) = 1.5 / 2.25
# released DiceLoss(reduction="sum"): the sum of 1 − dice over the pairs; "mean": their mean
DICE = (1 - 1 / 1.75) + (1 - 1.5 / 2.25)


def test_dice_by_hand():
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(DICE, abs=1e-6)
    assert abs(DICE - 0.761905) < 1e-6  # the same number, worked out on paper
    assert dice_loss(LOGITS, TARGET, reduction="mean").item() == pytest.approx(DICE / 2, abs=1e-6)


def test_total_loss_by_hand():
    loss = SegmentationLoss()(LOGITS, TARGET)
    assert loss.item() == pytest.approx(0.9 * CE + 0.1 * DICE, abs=1e-6)
    assert loss.item() == pytest.approx(0.499318, abs=1e-6)
    mean = SegmentationLoss(dice_reduction="mean")(LOGITS, TARGET)
    assert mean.item() == pytest.approx(0.461222, abs=1e-6)  # fiacli 0.1.0's loss


def test_unknown_dice_reduction_is_refused():
    with pytest.raises(ValueError, match="sum or mean"):
        dice_loss(LOGITS, TARGET, reduction="max")


def test_class_weights_matter():
    # unweighted CE would be the plain mean (ln 2 + ln 4/3) / 2
    plain = SegmentationLoss(ce_weight=1.0, dice_weight=0.0, class_weights=(1.0, 1.0))
    assert plain(LOGITS, TARGET).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    weighted = SegmentationLoss(ce_weight=1.0, dice_weight=0.0)
    assert weighted(LOGITS, TARGET).item() == pytest.approx(CE)


def test_dice_sums_over_samples_and_classes():
    # sample 2 is perfect (dice 1 for both classes): it adds nothing to the sum, and halves the
    # mean over 2 samples x 2 classes; a second copy of sample 1 doubles the sum
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    logits = torch.cat([LOGITS, perfect])
    target = torch.cat([TARGET, TARGET])
    assert dice_loss(logits, target).item() == pytest.approx(DICE, abs=1e-6)
    assert dice_loss(logits, target, reduction="mean").item() == pytest.approx(DICE / 4, abs=1e-6)
    twice = dice_loss(torch.cat([LOGITS, LOGITS]), target)
    assert twice.item() == pytest.approx(2 * DICE, abs=1e-6)


def test_empty_target_predicted_empty_costs_nothing():
    # all background and confidently predicted so: background dice 1, and the object class has
    # 0 intersection over ~0 mass, so s/(≈0 + s) ≈ 1 as well
    logits = torch.zeros(1, 2, 3, 3)
    logits[:, 0] = 30.0
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    assert SegmentationLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_bool_target_gradients_and_bf16():
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.rand(2, 8, 8) > 0.5
    loss = SegmentationLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    low = SegmentationLoss()(logits.detach().bfloat16(), target)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), rel=2e-2)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected logits"):
        SegmentationLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))

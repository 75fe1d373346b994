"""Resize (image bilinear, mask nearest) and RRSIS-D box erasing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiacli.training.transforms import (
    BoxErase,
    Resize,
    eval_transform,
    resize_logits,
    resize_mask,
    train_transform,
)


def sample(index: int = 0, h: int = 64, w: int = 80) -> dict:
    return {
        "image": torch.full((3, h, w), 200, dtype=torch.uint8),
        "mask": torch.zeros(h, w, dtype=torch.bool),
        "index": index,
        "expression": "x",
    }


def test_mask_nearest_samples_pixel_centres():
    m = np.zeros((4, 4), bool)
    m[1, 1] = m[3, 3] = True
    # 4 -> 2: output pixel k samples source pixel 2k + 1 (its centre), as PIL's NEAREST does
    assert resize_mask(m, 2).tolist() == [[True, False], [False, True]]
    # 2 -> 4: every pixel is copied to a 2×2 block
    up = resize_mask(torch.tensor([[True, False], [False, False]]), 4)
    assert up.dtype == torch.bool and up.int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0] * 4,
        [0] * 4,
    ]


def test_resize_sample_keeps_dtypes_and_other_keys():
    s = sample()
    s["mask"][10:20, 10:30] = True
    out = Resize((32, 40), keep_full_mask=True)(s)
    assert out["image"].shape == (3, 32, 40) and out["image"].dtype == torch.uint8
    assert int(out["image"].min()) == int(out["image"].max()) == 200  # flat stays flat
    assert out["mask"].shape == (32, 40) and out["mask"].dtype == torch.bool
    assert int(out["mask"].sum()) == 10 * 20 // 4
    assert out["mask_full"] is s["mask"] and out["expression"] == "x"


def test_resize_logits_to_full_resolution():
    logits = torch.randn(2, 2, 8, 8)
    big = resize_logits(logits, (20, 24))
    assert big.shape == (2, 2, 20, 24)
    # align_corners=True keeps the corner values exactly
    assert torch.allclose(big[..., 0, 0], logits[..., 0, 0])
    assert torch.allclose(big[..., -1, -1], logits[..., -1, -1])


def test_box_erase_fixed_share_of_samples():
    a = BoxErase(0.2, num_samples=100, seed=3)
    b = BoxErase(0.2, num_samples=100, seed=3)
    c = BoxErase(0.2, num_samples=100, seed=4)
    assert len(a.indices) == 20 and a.indices == b.indices and a.indices != c.indices
    lazy = BoxErase(0.2, seed=3)  # dataset size unknown: each index chosen with p = 0.2
    chosen = [lazy.chosen(i) for i in range(2000)]
    assert 300 < sum(chosen) < 500
    assert chosen == [BoxErase(0.2, seed=3).chosen(i) for i in range(2000)]


def test_box_erase_blacks_out_32px_boxes_only_on_chosen_samples():
    erase = BoxErase(0.5, num_samples=4, seed=0)
    hit = next(i for i in range(4) if erase.chosen(i))
    miss = next(i for i in range(4) if not erase.chosen(i))
    torch.manual_seed(0)
    out = erase(sample(hit, 256, 256))
    black = out["image"][0] == 0
    assert 32 * 32 <= int(black.sum()) <= 60 * 32 * 32
    # every black pixel belongs to a fully black 32×32 box
    ys, xs = np.nonzero(black.numpy())
    y, x = int(ys.min()), int(xs[ys == ys.min()].min())
    assert bool(black[y : y + 32, x : x + 32].all())
    assert (out["image"] == 0).all(dim=0).equal(black)  # all three channels
    assert not out["mask"].any()  # mask untouched
    untouched = erase(sample(miss, 256, 256))
    assert int(untouched["image"].min()) == 200


def test_box_erase_reproducible_under_torch_seed():
    erase = BoxErase(1.0, num_samples=1)
    torch.manual_seed(5)
    a = erase(sample(0))["image"]
    torch.manual_seed(5)
    b = erase(sample(0))["image"]
    assert torch.equal(a, b)


def test_pipelines():
    tr = train_transform(32, box_erasing=1.0, seed=0)
    out = tr(sample(0))
    assert out["image"].shape == (3, 32, 32) and int(out["image"].min()) == 0
    assert eval_transform(48)(sample(0))["image"].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="fraction"):
        BoxErase(1.5)

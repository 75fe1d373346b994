"""LAVT's simple decoder: coarse to fine, upsample and concatenate, two 3×3 conv-BN-ReLU each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FuseBlock(nn.Module):
    """``[conv3×3 (no bias) → BN → ReLU] × 2`` on the concatenation of two scales."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Decoder(nn.Module):
    """``up(c4) ⊕ c3 → fuse → up ⊕ c2 → fuse → up ⊕ c1 → fuse → 1×1 conv`` at 1/4 resolution.

    Upsampling is bilinear with ``align_corners=True``, as released.

    Args:
        channels: widths of c1..c4.
        width: hidden width (512 released, i.e. half of c4).
        num_classes: output channels (2: background, referred object).
    """

    def __init__(self, channels: tuple[int, ...], width: int, num_classes: int = 2):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.fuse3 = FuseBlock(c4 + c3, width)
        self.fuse2 = FuseBlock(width + c2, width)
        self.fuse1 = FuseBlock(width + c1, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c1, c2, c3, c4 = feats
        x = c4
        for fuse, skip in ((self.fuse3, c3), (self.fuse2, c2), (self.fuse1, c1)):
            x = F.interpolate(x, skip.shape[-2:], mode="bilinear", align_corners=True)
            x = fuse(torch.cat([x, skip], dim=1))
        return self.classifier(x)

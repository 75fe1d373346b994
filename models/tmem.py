"""Text-aware Multi-scale Enhancement Module (TMEM) and the scale-aware gate, as released.

All four stage features are pooled to the coarsest stage's size, concatenated, squeezed by a 1×1
conv, refined by ``num_blocks`` pre-norm blocks that attend to the sentence, expanded back and
split per stage. Each stage then mixes its own feature with its share through a scale-aware gate
(from RMSIN). The result is what the decoder consumes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from fiacli.models.fiam import ImageLanguageAttention


class TMEMBlock(nn.Module):
    """``z = z + Attn(LN(z), F_C)``; ``z = z + FFN(LN(z))`` on tokens ``(B, L, C)``."""

    def __init__(self, dim: int, text_dim: int, ffn_ratio: int = 2, num_heads: int = 1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ImageLanguageAttention(dim, text_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, dim * ffn_ratio)

    def forward(self, z: torch.Tensor, lang: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.norm1(z), lang, mask)
        return z + self.ffn(self.norm2(z))


class ScaleAwareGate(nn.Module):
    """``BN1(conv(x)) * up(hsigmoid(BN3(conv(g)))) + up(BN2(conv(g)))``, up = bilinear.

    ``x`` is the stage's own feature ``(B, C, H, W)``, ``g`` its share of the multi-scale feature
    at the coarse size. Upsampling uses ``align_corners=False``, as released.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.local_embedding = nn.Conv2d(dim, dim, 1)
        self.bn1 = nn.BatchNorm2d(dim)
        self.global_embedding = nn.Conv2d(dim, dim, 1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.global_act = nn.Conv2d(dim, dim, 1)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        local = self.bn1(self.local_embedding(x))
        glob = F.interpolate(
            self.bn2(self.global_embedding(g)), size, mode="bilinear", align_corners=False
        )
        act = F.interpolate(
            F.relu6(self.bn3(self.global_act(g)) + 3) / 6,
            size,
            mode="bilinear",
            align_corners=False,
        )
        return local * act + glob


class TMEM(nn.Module):
    """Cross-scale enhancement of the four stage features under the sentence's guidance.

    Args:
        channels: widths of the stage features (128/256/512/1024 for Swin-B).
        text_dim: BERT hidden size.
        num_blocks: TMEM blocks (``num_tmem``: 1 for RefSegRS, 3 for RRSIS-D checkpoints).
        reduction: hidden width = ``sum(channels) // reduction`` (1920 → 480 released).
        ffn_ratio: FFN hidden = ``ffn_ratio * hidden``.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        text_dim: int,
        num_blocks: int = 1,
        reduction: int = 4,
        ffn_ratio: int = 2,
    ):
        super().__init__()
        self.channels = tuple(channels)
        dim = sum(channels)
        hidden = dim // reduction
        self.down_channel = nn.Conv2d(dim, hidden, 1)
        self.blocks = nn.ModuleList(
            TMEMBlock(hidden, text_dim, ffn_ratio) for _ in range(num_blocks)
        )
        self.bn = nn.BatchNorm2d(hidden)
        self.up_channel = nn.Conv2d(hidden, dim, 1)
        self.gates = nn.ModuleList(ScaleAwareGate(c) for c in channels)

    def forward(
        self, feats: list[torch.Tensor], lang: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """feats: stage maps ``(B, C_i, H_i, W_i)``; lang ``(B, N, D)``; mask ``(B, N)``."""
        size = feats[-1].shape[-2:]
        z = self.down_channel(torch.cat([F.adaptive_avg_pool2d(f, size) for f in feats], dim=1))
        shape = z.shape
        z = z.flatten(2).transpose(1, 2)
        for block in self.blocks:
            z = block(z, lang, mask)
        z = self.bn(z.transpose(1, 2).reshape(shape))
        shares = self.up_channel(z).split(self.channels, dim=1)
        return [gate(f, g) for gate, f, g in zip(self.gates, feats, shares, strict=True)]

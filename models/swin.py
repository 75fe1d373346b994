"""The Swin backbone: timm's modules and weights, with the released window-padding order.

fiacli uses timm's ``SwinTransformer`` (patch embedding and stages) unchanged except for one step
of each block, the windowed attention, where the released FIANet (like Microsoft's Swin for
segmentation, which it builds on) differs from timm:

* released: zero-pad the map (after ``norm1``, bottom and right) to a multiple of the window, THEN
  roll by half a window; the shifted-window mask is built on the padded map and padded tokens are
  never masked (they take part in attention as keys);
* timm ≥ 0.9: roll first, pad afterwards.

The two agree only when the pad is 0 or equals the shift. At 480² input they differ in the last
stage (15 → 24), which moves the released model's output by about 2 and flips 14 % of the mask, so
:class:`ReleasedOrderSwinBlock` overrides ``_attn`` (and nothing else) to pad before the shift.

timm also keeps patch merging at the *start* of stage i+1, where the released code has it at the
end of stage i. That is only a naming difference (handled by the checkpoint converter): the fusion
after stage i sees the same tensor either way.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from torch import nn


class ReleasedOrderSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the released padding order: pad → shift → window attention.

    The shifted-window mask comes from timm's own ``get_attn_mask`` applied to the padded map, so
    padded positions form regions like any other and are not masked. Windows and shifts are never
    shrunk to the map size (the released code always uses the full window and shift).
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape

        shift = tuple(self.shift_size)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = self._padded_mask(Hp, Wp, x.device, x.dtype)

        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, C)
        x = window_reverse(windows, self.window_size, Hp, Wp)

        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

    def _padded_mask(self, Hp: int, Wp: int, device: torch.device, dtype: torch.dtype):
        """timm's shifted-window mask for a padded ``Hp × Wp`` map, cached per size."""
        cache = self.__dict__.setdefault("_mask_cache", {})
        key = (Hp, Wp, device, dtype)
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = self.get_attn_mask(torch.empty(1, Hp, Wp, 1, device=device, dtype=dtype))
        return cache[key]


class SwinBackbone(nn.Module):
    """Patch embedding and the four timm stages; the caller runs the stages one by one.

    Args:
        embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio: Swin architecture.
        drop_path_rate: stochastic depth during training (0.3 released).
        img_size: nominal input size (any size works: windows are padded).
        timm_name: timm model whose registry entry provides pretrained weights, if any.
        pretrained: load timm's pretrained weights for ``timm_name`` (needs the hub or cache).
        weights_file: load the backbone from a local timm/Microsoft Swin checkpoint instead.
        device: build on this device (``"meta"`` to count parameters without memory).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window_size: int,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        img_size: int = 480,
        timm_name: str = "swin_base_patch4_window12_384",
        pretrained: bool = False,
        weights_file: str | os.PathLike[str] | None = None,
        device: Any = None,
    ):
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {
            "num_classes": 0,
            "global_pool": "",
            "img_size": img_size,
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depths": tuple(depths),
            "num_heads": tuple(num_heads),
            "window_size": window_size,
            "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate,
            # any input size: pad the image to the patch size, never shrink windows or shifts
            "strict_img_size": False,
            "always_partition": True,
            "embed_layer": functools.partial(PatchEmbed, dynamic_img_pad=True),
        }
        if weights_file is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
        if device is not None:
            kwargs["device"] = device
        swin: SwinTransformer = timm.create_model(
            timm_name, pretrained=pretrained or weights_file is not None, **kwargs
        )
        for stage in swin.layers:
            for block in stage.blocks:
                block.__class__ = ReleasedOrderSwinBlock
                # PyTorch's fused attention kernel (timm keeps it opt-in for Swin): same result
                # within 2e-4 on the parity fixture, and faster on CPU and GPU alike
                block.attn.fused_attn = True
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers  # stage i: [patch merging if i > 0] + blocks
        self.num_features = [int(embed_dim * 2**i) for i in range(len(depths))]


def sincos_position_embedding(
    height: int,
    width: int,
    dim: int,
    *,
    max_half_cycles: float = 16.0,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding over NORMALISED coordinates, ``(height, width, dim)``.

    Token ``(i, j)`` sits at ``u = ((i + 0.5) / height, (j + 0.5) / width)`` in (0, 1), so a
    place keeps its code whatever the map size: "the left third" of a 96² chip and of a 480² chip
    look the same, which a learned table (Swin's ``ape``) or one indexed by token would not give.
    Channels are ``[sin ω·u_y, cos ω·u_y, sin ω·u_x, cos ω·u_x]``, each over ``dim // 4``
    frequencies ``ω = π · max_half_cycles^{k/(F−1)}``, log-spaced from half a cycle per side
    (``cos`` then runs monotonically from 1 to −1 across the side: a linear code of where) up to
    ``max_half_cycles / 2`` cycles. No parameters.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    n = dim // 4
    exponents = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    omega = math.pi * max_half_cycles**exponents  # (F,)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    ay, ax = ys[:, None] * omega, xs[:, None] * omega  # (H, F), (W, F)
    y = torch.cat([ay.sin(), ay.cos()], dim=1)[:, None, :].expand(height, width, 2 * n)
    x = torch.cat([ax.sin(), ax.cos()], dim=1)[None, :, :].expand(height, width, 2 * n)
    return torch.cat([y, x], dim=-1).to(device=device, dtype=dtype or torch.float32)

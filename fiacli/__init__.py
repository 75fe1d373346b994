"""fiacli: referring remote-sensing image segmentation with FIANet.

Describe an object in words, get its pixels back from a GeoTIFF. The public Python API is imported
lazily so that ``fiacli --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "parse": "fiacli.parsing",
    "ParsedExpression": "fiacli.parsing",
    "ParseSettings": "fiacli.parsing",
    "strip_position": "fiacli.parsing",
    "FiacliError": "fiacli.errors",
    "load_model": "fiacli.api",
    "Segmenter": "fiacli.api",
    "segment": "fiacli.api",
    "SegmentResult": "fiacli.pipeline",
    "demo_scene_path": "fiacli.demo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fiacli' has no attribute {name!r}")

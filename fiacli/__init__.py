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
    "parse": "fiacli.text.parsing",
    "ParsedExpression": "fiacli.text.parsing",
    "ParseSettings": "fiacli.text.parsing",
    "strip_position": "fiacli.text.parsing",
    "FiacliError": "fiacli.core.errors",
    "load_model": "fiacli.app.api",
    "Segmenter": "fiacli.app.api",
    "segment": "fiacli.app.api",
    "SegmentResult": "fiacli.app.pipeline",
    "SegmentOptions": "fiacli.app.segment_options",
    "demo_scene_path": "fiacli.app.demo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fiacli' has no attribute {name!r}")

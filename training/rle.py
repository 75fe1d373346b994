"""COCO run-length encoding (RLE) of binary masks, in numpy.

RRSIS-D stores its masks as COCO RLE dicts ``{"size": [h, w], "counts": ...}``. pycocotools is the
usual decoder, but it is a compiled dependency that fiacli's stack does not otherwise need, and the
format is small: runs of alternating 0s and 1s (starting with 0s) over the mask flattened in
column-major (Fortran) order. ``counts`` is either a list of ints ("uncompressed") or pycocotools'
compressed string: each run, minus the run two places before it (from the 4th run on), written as
a signed little-endian base-32 number, 5 bits per character offset by 48, bit 0x20 = "more follows".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fiacli.core.errors import FiacliError


class RLEError(FiacliError):
    """A segmentation that is not a valid COCO RLE (or polygon) for its image."""


class MaskSizeError(RLEError):
    """A valid RLE whose size differs from the image it belongs to."""


def counts_from_string(s: str | bytes) -> list[int]:
    """Decode pycocotools' compressed ``counts`` string into run lengths."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise RLEError("RLE counts string ends in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise RLEError(f"RLE counts string has an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as pycocotools' compressed ``counts`` string."""
    out = bytearray()
    for i, run in enumerate(counts):
        x = int(run) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in the C code
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D binary mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def encode(mask: np.ndarray, *, compress: bool = True) -> dict[str, Any]:
    """A COCO RLE dict for ``mask`` (H×W); ``counts`` as a compressed string by default."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    counts = mask_to_counts(mask)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": counts_to_string(counts) if compress else counts,
    }


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode one COCO RLE dict into a bool mask of shape ``rle["size"]`` (H, W)."""
    try:
        h, w = (int(v) for v in rle["size"])
        raw = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise RLEError(f"not a COCO RLE dict (needs 'size' [h, w] and 'counts'): {exc}") from None
    counts = counts_from_string(raw) if isinstance(raw, str | bytes) else [int(c) for c in raw]
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any():
        raise RLEError("RLE has a negative run length")
    if int(runs.sum()) != h * w:
        raise RLEError(
            f"RLE runs cover {int(runs.sum())} pixels, but its size {h}×{w} needs {h * w}"
        )
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def polygons_to_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (union) with PIL.

    Custom COCO-style data often stores polygons instead of RLE. PIL's fill differs from
    pycocotools' at the boundary by at most a pixel, which is below annotation noise.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        xy = [float(v) for v in poly]
        if len(xy) < 6 or len(xy) % 2:
            raise RLEError("a polygon needs at least three x, y pairs")
        draw.polygon(xy, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The union mask of a COCO ``segmentation``: an RLE dict, a list of them, or polygons."""
    if isinstance(segmentation, Mapping):
        segmentation = [segmentation]
    if not isinstance(segmentation, list) or not segmentation:
        raise RLEError("segmentation is empty or neither RLE dicts nor polygons")
    if all(isinstance(s, list | tuple) for s in segmentation):
        return polygons_to_mask(segmentation, height, width)
    out = np.zeros((height, width), dtype=bool)
    for part in segmentation:
        if not isinstance(part, Mapping):
            raise RLEError("segmentation mixes RLE dicts with other values")
        m = decode(part)
        if m.shape != (height, width):
            raise MaskSizeError(
                f"the mask is {m.shape[0]}×{m.shape[1]} but the image is {height}×{width}"
            )
        out |= m
    return out

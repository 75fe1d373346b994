"""Test doubles for ``fiacli segment``: an "oracle" model and GeoTIFF writers.

The oracle's output is a fixed function of the chip's pixels, so the same function applied to the
whole scene (computed here with plain numpy/scipy, independently of fiacli) is what a correct
tiling, blending and stitching pipeline must reproduce.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from scipy import ndimage

CHANNELS = {"red": 0, "green": 1, "blue": 2}


@dataclass(frozen=True)
class Encoded:
    channel: int
    side: str | None  # "left"/"right" half of the image the expression points at, if any


@dataclass
class Oracle:
    """``ChipPredictor`` double: probability = channel / 255 (optionally box-filtered).

    The expression picks the channel ("red", "green", "blue"; red by default). ``radius`` > 0
    averages over a (2r+1)² box with the chip's edge pixels repeated, so chip borders *differ*
    from the whole-scene result, like a real model's context effects. "left"/"right" zero the
    other half of the image the model sees, unless encoded with ``drop_position``.
    """

    image_size: int = 64
    radius: int = 0
    encode_calls: list[tuple[str, bool]] = field(default_factory=list)
    batches: list[tuple[int, ...]] = field(default_factory=list)
    fail_after: int | None = None  # raise KeyboardInterrupt on this predict() call (0-based)
    fail_with: type[BaseException] = KeyboardInterrupt

    def encode(self, expression: str, *, drop_position: bool = False) -> Encoded:
        self.encode_calls.append((expression, drop_position))
        words = expression.lower().split()
        channel = next((CHANNELS[w] for w in words if w in CHANNELS), 0)
        side = None if drop_position else next((w for w in words if w in ("left", "right")), None)
        return Encoded(channel, side)

    def predict(self, chips: np.ndarray, encoded: Encoded) -> np.ndarray:
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise self.fail_with()
        assert chips.dtype == np.uint8 and chips.ndim == 4 and chips.shape[1] == 3
        self.batches.append(chips.shape)
        p = np.stack([box_mean(c, self.radius) for c in chips[:, encoded.channel]])
        half = p.shape[2] // 2
        if encoded.side == "left":
            p[:, :, half:] = 0
        elif encoded.side == "right":
            p[:, :, :half] = 0
        return p

    @property
    def chips_seen(self) -> int:
        return sum(b[0] for b in self.batches)


def whole_scene(rgb: np.ndarray, expression: str = "red", radius: int = 0) -> np.ndarray:
    """What the oracle gives when it sees the whole scene ``(3, H, W)`` at once."""
    channel = next((CHANNELS[w] for w in expression.split() if w in CHANNELS), 0)
    return box_mean(rgb[channel], radius)


def box_mean(channel: np.ndarray, radius: int) -> np.ndarray:
    """Mean of a (2r+1)² box (edges repeated) / 255, summed in integers: bit-exact anywhere."""
    k = 2 * radius + 1
    padded = np.pad(channel.astype(np.int64), radius, mode="edge")
    h, w = channel.shape
    total = sum(padded[dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k))
    return (total / (k * k * 255.0)).astype(np.float32)


UTM_TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: Any = "EPSG:32633",
    transform: Affine | None = UTM_TRANSFORM,
    nodata: float | None = None,
    tiled: bool = False,
    **extra: Any,
) -> Path:
    """A GeoTIFF from a ``(bands, H, W)`` array (``crs=None`` for an ungeoreferenced file)."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, **extra)  # fmt: skip
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
    return path


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB so thresholds give blobs, not salt-and-pepper."""
    rng = np.random.default_rng(seed)
    noise = rng.random((3, height, width))
    smooth = ndimage.uniform_filter(noise, size=(1, 5, 5), mode="reflect")
    lo, hi = smooth.min(), smooth.max()
    return np.clip((smooth - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)


def read(path: Path, band: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read(band) if band else ds.read()


def ellipsoid_cell_area(lat0: float, lat1: float, dlon: float) -> float:
    """Area of a lat/lon cell on the WGS84 ellipsoid from the authalic-latitude formula."""
    a, f = 6378137.0, 1 / 298.257223563
    e = math.sqrt(f * (2 - f))

    def q(lat):
        s = math.sin(math.radians(lat))
        return (1 - e * e) * (
            s / (1 - e * e * s * s) - math.log((1 - e * s) / (1 + e * s)) / (2 * e)
        )

    return a * a / 2 * math.radians(dlon) * abs(q(lat1) - q(lat0))

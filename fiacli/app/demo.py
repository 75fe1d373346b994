"""The bundled demo: a small FIANet trained by fiacli and a synthetic GeoTIFF scene it knows.

Both live in ``fiacli/assets`` so that ``fiacli segment --demo`` works offline, right after install:

* ``fianet-tiny-demo.safetensors``: fianet-tiny trained with ``fiacli train --dataset synth`` on
  ``fiacli data synth`` scenes (``examples/train_demo_model.sh`` is the exact command). Only the
  weights that are not the frozen offline MiniLM are stored, in half precision (a few MB).
* ``demo_scene.tif``: 2,048 × 2,048 px, 0.5 m/px, EPSG:32633, JPEG-in-TIFF with overviews, drawn
  by :func:`build_demo_scene` with the synthetic generator's own drawing code, objects at the
  scale the demo model was trained on. ``demo_scene.json`` holds what was drawn where (the ground
  truth the tests and the preview check use).

The scene is a patchwork of parcels the size of the training images (each a
:func:`fiacli.training.synth.draw_scene` background, so roads and fields have the training scale)
with objects pasted in: every object is rendered as the training data renders it (same stamp,
shadow, water or apron backdrop, sensor noise) in a training-sized frame, and only the pixels the
object changed are copied, so the model sees exactly the object scale it learned.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.errors import FiacliError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_MODEL_NAME = "fianet-tiny-demo"
DEMO_MODEL_FILE = "fianet-tiny-demo.safetensors"
DEMO_SCENE_FILE = "demo_scene.tif"
DEMO_TRUTH_FILE = "demo_scene.json"
DEMO_MODEL_DESCRIPTION = "demo only: fianet-tiny trained on synthetic scenes (fiacli data synth)"
# The expression the quick start uses: one object in the whole scene, among look-alikes. The demo
# model finds it and, with --min-area 15 (m²), nothing else
# (`python -m fiacli.app.demo_tools check`).
DEMO_EXPRESSION = "the yellow vehicle"
DEMO_MIN_AREA = 15.0
DEMO_NOTE = (
    f"using the bundled demo model {DEMO_MODEL_NAME}, trained on synthetic scenes only; for real "
    "imagery download the authors' trained checkpoint (BaiduNetDisk link and extraction code 65g4 "
    "in github.com/Shaosifan/FIANet/issues/11), convert it with `fiacli convert` and pass -m, or "
    "train one with `fiacli train`"
)


def demo_model_path() -> Path:
    return ASSETS / DEMO_MODEL_FILE


def demo_scene_path() -> Path:
    """The bundled demo GeoTIFF (refuses clearly when an installation lost it)."""
    path = ASSETS / DEMO_SCENE_FILE
    if not path.is_file():
        raise FiacliError(
            f"the bundled demo scene is missing from this installation ({path}); reinstall fiacli"
        )
    return path


def demo_truth() -> dict[str, Any]:
    """What :func:`build_demo_scene` drew in the bundled scene (objects, expressions, grid)."""
    return json.loads((ASSETS / DEMO_TRUTH_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class DemoObject:
    """One object of the demo scene: class, colour, centre pixel (row, col), angle."""

    cls: str
    color: str
    center: tuple[int, int]
    angle: float = 0.0
    length_share: float = 0.0  # length as a share of the training frame; 0 = the class's middle


@dataclass
class DemoSceneSpec:
    """Everything that defines the demo scene; the defaults are the bundled one."""

    size: int = 2048
    frame: int = 96  # the demo model's training image side: objects are drawn at that scale
    parcel: int = 0  # side of each background parcel; 0: the frame (roads, fields at scale)
    gsd: float = 0.5  # metres per pixel
    crs: str = "EPSG:32633"
    origin: tuple[float, float] = (448_000.0, 5_412_000.0)  # top-left corner, easting/northing
    seed: int = 2024
    jpeg_quality: int = 88
    objects: list[DemoObject] = field(default_factory=list)
    expressions: dict[str, list[int]] = field(default_factory=dict)  # text -> target indices


def default_spec() -> DemoSceneSpec:
    """The bundled scene: twelve objects of five classes spread over 2,048² px of fields and roads.

    Three vehicles (red, blue, yellow) among airplanes, a ship, storage tanks and tennis courts:
    the quick start's "the yellow vehicle" needs the class *and* the colour word to pick one
    object out of 4 Mpx. Each class and each colour unique within its class is a demo expression.
    """
    objs = [
        DemoObject("ship", "white", (1490, 610), 35.0),
        DemoObject("airplane", "white", (420, 1480), 120.0),
        DemoObject("airplane", "gray", (700, 1720), 60.0),
        DemoObject("airplane", "white", (1650, 1560), 10.0),
        DemoObject("storage tank", "white", (380, 420)),
        DemoObject("storage tank", "gray", (560, 330)),
        DemoObject("storage tank", "white", (470, 640)),
        DemoObject("vehicle", "red", (1100, 980), 80.0),
        DemoObject("vehicle", "blue", (1240, 1300), 15.0),
        DemoObject("vehicle", "yellow", (900, 300), 140.0),
        DemoObject("tennis court", "blue", (1780, 900), 20.0),
        DemoObject("tennis court", "green", (260, 1000), 95.0),
    ]
    by_class: dict[str, list[int]] = {}
    for i, o in enumerate(objs):
        by_class.setdefault(o.cls, []).append(i)
    expressions = {f"the {cls}": idx for cls, idx in by_class.items()}
    for cls, idx in by_class.items():
        colors = [objs[i].color for i in idx]
        for i in idx:
            if len(idx) > 1 and colors.count(objs[i].color) == 1:
                expressions[f"the {objs[i].color} {cls}"] = [i]
    return DemoSceneSpec(objects=objs, expressions=expressions)


def _render_object(obj: DemoObject, spec: DemoSceneSpec, rng: np.random.Generator) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:  # fmt: skip
    """(rgb, changed, silhouette) of ``obj`` drawn centred in a training-sized frame."""
    from fiacli.training.synth import CLASS_STYLES, SynthObject, draw_scene

    style = CLASS_STYLES[obj.cls]
    share = obj.length_share or float(np.mean(style["length"]))
    synth = SynthObject(obj.cls, (spec.frame // 2, spec.frame // 2),
                        int(round(share * spec.frame)), obj.angle, obj.color)  # fmt: skip
    state = rng.bit_generator.state
    with_obj, labels = draw_scene(rng, spec.frame, [synth])
    rng.bit_generator.state = state  # the same ground and noise, without the object
    without, _ = draw_scene(rng, spec.frame, [])
    changed = (with_obj != without).any(axis=2) | (labels > 0)
    return with_obj, changed, labels > 0


def render_demo_scene(spec: DemoSceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """The scene as (H×W×3 uint8 RGB, H×W int16 labels: 0 ground, i + 1 = ``spec.objects[i]``)."""
    from fiacli.training.synth import draw_scene

    rng = np.random.default_rng(spec.seed)
    side = spec.parcel or spec.frame
    n = math.ceil(spec.size / side)
    image = np.empty((n * side, n * side, 3), np.uint8)
    for r in range(n):
        for c in range(n):
            parcel, _ = draw_scene(rng, side, [])
            image[r * side : (r + 1) * side, c * side : (c + 1) * side] = parcel
    image = np.ascontiguousarray(image[: spec.size, : spec.size])
    labels = np.zeros((spec.size, spec.size), np.int16)
    half = spec.frame // 2
    for i, obj in enumerate(spec.objects):
        rgb, changed, silhouette = _render_object(obj, spec, rng)
        y0, x0 = obj.center[0] - half, obj.center[1] - half
        if y0 < 0 or x0 < 0 or y0 + spec.frame > spec.size or x0 + spec.frame > spec.size:
            raise FiacliError(f"demo object {i} ({obj.cls}) is too close to the scene edge")
        window = np.s_[y0 : y0 + spec.frame, x0 : x0 + spec.frame]
        image[window][changed] = rgb[changed]
        labels[window][silhouette] = i + 1
    return image, labels


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def build_demo_scene(
    path: str | os.PathLike[str],
    spec: DemoSceneSpec | None = None,
    *,
    truth: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the demo GeoTIFF (JPEG tiles + overviews) and return its ground truth.

    ``truth`` also writes the ground truth as JSON: per object its class, colour, centre and
    bounding box in pixels and in map coordinates, and the demo expressions with their targets.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    from fiacli.core.io import atomic_output

    spec = spec or default_spec()
    image, labels = render_demo_scene(spec)
    transform = from_origin(*spec.origin, spec.gsd, spec.gsd)
    objects = []
    for i, obj in enumerate(spec.objects):
        mask = labels == i + 1
        x0, y0, x1, y1 = _bbox(mask)
        objects.append({
            "index": i, **asdict(obj), "pixels": int(mask.sum()), "bbox_px": [x0, y0, x1, y1],
            "bbox_map": [*(transform * (x0, y1)), *(transform * (x1, y0))],
        })  # fmt: skip
    record = {
        "scene": DEMO_SCENE_FILE,
        "width": spec.size,
        "height": spec.size,
        "crs": spec.crs,
        "transform": list(transform)[:6],
        "gsd_m": spec.gsd,
        "seed": spec.seed,
        "frame": spec.frame,
        "parcel": spec.parcel or spec.frame,
        "objects": objects,
        "expressions": spec.expressions,
        "demo_expression": DEMO_EXPRESSION,
    }
    profile = {
        "driver": "GTiff", "width": spec.size, "height": spec.size, "count": 3,
        "dtype": "uint8", "crs": spec.crs, "transform": transform, "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "JPEG",
        "jpeg_quality": spec.jpeg_quality, "photometric": "YCBCR", "interleave": "pixel",
    }  # fmt: skip
    with (
        atomic_output(path, overwrite=overwrite) as tmp,
        rasterio.open(tmp, "w", **profile) as ds,
    ):
        ds.write(image.transpose(2, 0, 1))
        ds.update_tags(
            fiacli_demo="synthetic scene drawn by fiacli.app.demo.build_demo_scene",
            seed=str(spec.seed),
        )
        ds.build_overviews([2, 4, 8, 16], Resampling.average)
    if truth is not None:
        with atomic_output(truth, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record

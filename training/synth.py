"""Synthetic referring scenes in the RRSIS-D layout, for tests, demos and CPU learning checks.

Each scene is an aerial-looking image (textured ground, fields, roads, sensor noise) with a few
objects from the RRSIS-D vocabulary drawn with recognisable shapes and colours: storage tanks are
discs, vehicles small rectangles, airplanes crosses, ships pointed hulls on water, tennis courts
lined rectangles, ground track fields red ovals, baseball fields fans. Objects sit in distinct cells
of a 3×3 grid, so the nine absolute phrases of RRSIS-D ("on the lower left", "in the middle", …)
name exactly one cell and every expression is unambiguous.

A share of scenes are *position-only*: two identical objects (same stamp, pixel for pixel) in
different cells, each target of one ref whose expression differs only by the spatial phrase. Those
refs carry ``position_only: True`` (an extra key in ``refs(unc).p``; the loader exposes it) so a
learning check can score the spatial reasoning separately.

The drawing is reusable: :func:`draw_scene` renders any list of :class:`SynthObject` onto
:func:`draw_background` and returns the image with an instance label map, at any size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fiacli.core.datasets import SYNTH
from fiacli.core.errors import FiacliError
from fiacli.core.io import sweep_stale, temporary_name
from fiacli.training.datasets import (
    RRSISD_IMAGES,
    RRSISD_INSTANCES,
    RRSISD_REFS,
    SPLITS,
)
from fiacli.training.rle import encode

SYNTH_MARKER = "fiacli synthetic referring scenes"

COLORS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 230),
    "gray": (150, 152, 156),
    "red": (205, 45, 40),
    "blue": (45, 85, 200),
    "yellow": (235, 205, 45),
    "green": (55, 150, 75),
}

# class -> colour names it may take and its length as a share of the scene side. Objects are as
# large as one grid cell (a third of the side) allows whatever their rotation: the model's mask is
# predicted at 1/4 resolution, so at a 128-px training size small objects could never reach a high
# IoU and the CPU learning check would measure boundary blur, not grounding.
CLASS_STYLES: dict[str, dict[str, Any]] = {
    "storage tank": {"colors": ("white", "gray"), "length": (0.17, 0.24), "rotate": False},
    "vehicle": {
        "colors": ("red", "blue", "white", "yellow"),
        "length": (0.17, 0.22),
        "rotate": True,
    },
    "airplane": {"colors": ("white", "gray"), "length": (0.23, 0.28), "rotate": True},
    "ship": {"colors": ("white", "gray"), "length": (0.23, 0.29), "rotate": True},
    "tennis court": {"colors": ("green", "blue"), "length": (0.21, 0.27), "rotate": True},
    "ground track field": {"colors": ("red",), "length": (0.25, 0.29), "rotate": False},
    "baseball field": {"colors": ("green",), "length": (0.22, 0.27), "rotate": False},
}
SYNTH_CLASSES = SYNTH.scene_classes  # the table's list; CLASS_STYLES says how to draw each

# (row, col) of the 3×3 grid -> the absolute phrases that end ~70 % of RRSIS-D expressions
# (docs/parser.md)
GRID_PHRASES: dict[tuple[int, int], str] = {
    (0, 0): "on the upper left",
    (0, 1): "on the top",
    (0, 2): "on the upper right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "on the lower left",
    (2, 1): "at the bottom",
    (2, 2): "on the lower right",
}
RELATIONS = (  # phrase, (d_row, d_col) sign the target must have relative to the anchor
    ("on the left of", (0, -1)),
    ("on the right of", (0, 1)),
    ("above", (-1, 0)),
    ("below", (1, 0)),
)


@dataclass(frozen=True)
class SynthObject:
    """One object to draw: class, centre pixel (row, col), length in pixels, angle, colour."""

    cls: str
    center: tuple[int, int]
    length: int
    angle: float = 0.0  # degrees
    color: str = ""  # a COLORS name; "" = the class's first colour

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color or CLASS_STYLES[self.cls]["colors"][0]]


# --------------------------------------------------------------------------- shapes


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _stadium(length: float, width: float, n: int = 24) -> np.ndarray:
    r, half = width / 2, (length - width) / 2
    t = np.linspace(-np.pi / 2, np.pi / 2, n)
    right = np.stack([half + r * np.cos(t), r * np.sin(t)], axis=1)
    return np.concatenate([right, right[::-1] * [-1, 1]])


def _shade(rgb: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)  # type: ignore[return-value]


def _layers(obj: SynthObject) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """Polygons (object frame, length along x, centred at 0) and fills, drawn in order."""
    L, c = float(obj.length), obj.rgb
    white = COLORS["white"]
    if obj.cls == "storage tank":
        return [
            (_ellipse(0, 0, L / 2, L / 2), _shade(c, 0.72)),
            (_ellipse(0, 0, 0.41 * L, 0.41 * L), c),
            (_ellipse(0, 0, 0.07 * L, 0.07 * L), _shade(c, 0.6)),
        ]
    if obj.cls == "vehicle":
        w = 0.5 * L
        return [
            (_rect(-L / 2, -w / 2, L / 2, w / 2), c),
            (_rect(0.12 * L, -0.4 * w, 0.28 * L, 0.4 * w), (40, 45, 55)),
            (_rect(-0.3 * L, -0.38 * w, 0.1 * L, 0.38 * w), _shade(c, 1.12)),
        ]
    if obj.cls == "airplane":
        body = 0.17 * L
        return [
            (_rect(-L / 2, -body / 2, 0.4 * L, body / 2), c),
            (np.array([(0.4 * L, -body / 2), (L / 2, 0), (0.4 * L, body / 2)]), c),
            (np.array([(0.18 * L, 0), (-0.04 * L, -0.48 * L), (-0.2 * L, -0.48 * L),
                       (-0.12 * L, 0), (-0.2 * L, 0.48 * L), (-0.04 * L, 0.48 * L)]), c),
            (_rect(-0.5 * L, -0.21 * L, -0.37 * L, 0.21 * L), c),
        ]  # fmt: skip
    if obj.cls == "ship":
        w = 0.3 * L
        hull = np.array([(-L / 2, -w / 2), (0.28 * L, -w / 2), (L / 2, 0), (0.28 * L, w / 2),
                         (-L / 2, w / 2)])  # fmt: skip
        return [(hull, c), (_rect(-0.38 * L, -0.3 * w, -0.12 * L, 0.3 * w), _shade(c, 0.62))]
    if obj.cls == "tennis court":
        w, t = 0.5 * L, max(1.0, L / 36)
        inner = (-L / 2 + 2 * t, -w / 2 + 2 * t, L / 2 - 2 * t, w / 2 - 2 * t)
        return [
            (_rect(-L / 2, -w / 2, L / 2, w / 2), c),
            (_rect(*inner), white),
            (_rect(inner[0] + t, inner[1] + t, inner[2] - t, inner[3] - t), _shade(c, 1.08)),
            (_rect(-t / 2, -w / 2 + 2 * t, t / 2, w / 2 - 2 * t), white),
        ]
    if obj.cls == "ground track field":
        w = 0.56 * L
        return [
            (_stadium(L, w), c),
            (_stadium(L - 0.2 * w, 0.8 * w), (228, 225, 215)),
            (_stadium(L - 0.24 * w, 0.76 * w), c),
            (_stadium(L - 0.4 * w, 0.6 * w), COLORS["green"]),
        ]
    if obj.cls == "baseball field":
        t = np.linspace(np.radians(-135), np.radians(-45), 24)
        r, apex = 0.72 * L, (0.0, 0.36 * L)
        fan = np.concatenate([[apex], np.stack([r * np.cos(t), apex[1] + r * np.sin(t)], axis=1)])
        d = 0.2 * L
        diamond = np.array(
            [(0, apex[1]), (-d, apex[1] - d), (0, apex[1] - 2 * d), (d, apex[1] - d)]
        )
        return [(fan, c), (diamond, (196, 158, 108))]
    raise FiacliError(f"unknown synthetic object class {obj.cls!r}; use {', '.join(SYNTH_CLASSES)}")


@lru_cache(maxsize=256)
def stamp(obj: SynthObject) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 h×w×3, mask bool h×w) of ``obj`` cropped to its silhouette; same object, same
    stamp — which is what makes the twins of a position-only scene identical."""
    size = int(math.ceil(1.6 * obj.length)) + 4
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    rgb = Image.new("RGB", (size, size))
    sil = Image.new("L", (size, size))
    draw_rgb, draw_sil = ImageDraw.Draw(rgb), ImageDraw.Draw(sil)
    for poly, fill in _layers(obj):
        xy = [tuple(p) for p in (poly @ rot.T + size / 2)]
        draw_rgb.polygon(xy, fill=fill)
        draw_sil.polygon(xy, fill=255)
    mask = np.asarray(sil) > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.asarray(rgb)[crop].copy(), mask[crop].copy()


# --------------------------------------------------------------------------- scenes


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def draw_background(rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
    """Textured ground with striped fields and dashed roads, uint8 H×W×3 (noise comes last)."""
    h, w = _as_hw(size)
    side = min(h, w)
    grounds = [(98, 122, 72), (138, 128, 96), (118, 114, 104), (106, 100, 80)]
    base = np.array(grounds[rng.integers(len(grounds))], dtype=np.float32)
    # low-frequency variation, mostly in brightness with a little colour, like real ground cover
    low = rng.random((6, 6, 3), dtype=np.float32) * 0.25 + rng.random((6, 6, 1), dtype=np.float32)
    low = Image.fromarray((low / 1.25 * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    img = base + (np.asarray(low).astype(np.float32) - 127.5) * (40 / 255)
    for _ in range(int(rng.integers(1, 4))):  # rectangular fields with furrow stripes
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        fw, fh = (int(v) for v in rng.integers(side // 6, side // 2, size=2))
        theta = rng.uniform(0, np.pi)
        yy, xx = np.ogrid[y0 : min(h, y0 + fh + 1), x0 : min(w, x0 + fw + 1)]
        phase = (xx * np.cos(theta) + yy * np.sin(theta)).astype(np.float32)
        stripes = np.sin(phase / max(2.0, side / 90)) * 7
        field = np.array(grounds[rng.integers(len(grounds))], dtype=np.float32)
        img[yy, xx] = field * rng.uniform(0.85, 1.2) + stripes[..., None]
    road = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(road)
    for _ in range(int(rng.integers(1, 3))):  # straight roads with a dashed centre line
        width = max(3, int(side * rng.uniform(0.03, 0.045)))
        at = int(rng.integers(side // 8, side - side // 8))
        grey = int(rng.integers(110, 140))
        line = [(0, at), (w, at)] if rng.random() < 0.5 else [(at, 0), (at, h)]
        draw.line(line, fill=(grey, grey, grey + 4), width=width)
        dash = max(4, side // 40)
        (x0, y0), (x1, y1) = line
        steps = max(x1 - x0, y1 - y0) // (2 * dash)
        for k in range(steps):
            s0 = 2 * k * dash
            seg = [(s0, y0), (s0 + dash, y0)] if y0 == y1 else [(x0, s0), (x0, s0 + dash)]
            draw.line(seg, fill=(225, 225, 215), width=max(1, width // 8))
    return np.asarray(road)


def _backdrop(obj: SynthObject, shape: tuple[int, int]) -> tuple[tuple[int, ...], list[int]] | None:
    """Water under ships, a concrete apron under airplanes: context a real scene would have."""
    fills = {"ship": (38, 68, 104), "airplane": (172, 172, 166)}
    if obj.cls not in fills:
        return None
    pad = int(0.78 * obj.length) if obj.cls == "ship" else int(0.68 * obj.length)
    r, c = obj.center
    box = [max(0, c - pad), max(0, r - pad), min(shape[1] - 1, c + pad), min(shape[0] - 1, r + pad)]
    return fills[obj.cls], box


def draw_scene(
    rng: np.random.Generator, size: int | tuple[int, int], objects: Sequence[SynthObject]
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``objects`` on a fresh background.

    Returns the image (uint8 H×W×3) and an instance label map (int32 H×W: 0 = ground, i + 1 =
    the visible pixels of ``objects[i]``; later objects cover earlier ones).
    """
    h, w = _as_hw(size)
    base = Image.fromarray(draw_background(rng, (h, w)))
    draw = ImageDraw.Draw(base)
    for obj in objects:
        backdrop = _backdrop(obj, (h, w))
        if backdrop is not None:
            draw.rounded_rectangle(backdrop[1], radius=obj.length // 5, fill=backdrop[0])
    img = np.array(base)
    labels = np.zeros((h, w), dtype=np.int32)
    shadow = max(1, round(0.012 * min(h, w)))
    for i, obj in enumerate(objects):
        rgb, mask = stamp(obj)
        y0, x0 = obj.center[0] - mask.shape[0] // 2, obj.center[1] - mask.shape[1] // 2
        # clip the stamp to the image (objects near an edge are cut, like in real tiles)
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1, sx1 = min(mask.shape[0], h - y0), min(mask.shape[1], w - x0)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        m, px = mask[sy0:sy1, sx0:sx1], rgb[sy0:sy1, sx0:sx1]
        ys, xs = slice(y0 + sy0, y0 + sy1), slice(x0 + sx0, x0 + sx1)
        # shadow: the silhouette shifted down-right darkens the ground
        sh_ys = slice(min(h, ys.start + shadow), min(h, ys.stop + shadow))
        sh_xs = slice(min(w, xs.start + shadow), min(w, xs.stop + shadow))
        sm = m[: sh_ys.stop - sh_ys.start, : sh_xs.stop - sh_xs.start]
        region = img[sh_ys, sh_xs]
        region[sm] = (region[sm] * 0.55).astype(np.uint8)
        img[ys, xs][m] = px[m]
        labels[ys, xs][m] = i + 1
    # sensor noise: uniform ±8 (σ ≈ 4.9), cheaper to draw than Gaussian and looks the same
    noisy = img.astype(np.int16) + rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def _cell_center(
    rng: np.random.Generator, cell: tuple[int, int], size: int, extent: int
) -> tuple[int, int]:
    """A random centre for an object of ``extent`` pixels that keeps it inside its grid cell."""
    out = []
    for k in cell:
        lo, hi = k * size / 3, (k + 1) * size / 3
        margin = extent / 2 + size * 0.01
        a, b = lo + margin, hi - margin
        out.append(int(round(rng.uniform(a, b) if b > a else (lo + hi) / 2)))
    return out[0], out[1]


def _random_object(
    rng: np.random.Generator, cls: str, size: int, cell: tuple[int, int]
) -> SynthObject:
    style = CLASS_STYLES[cls]
    length = int(round(size * rng.uniform(*style["length"])))
    angle = float(rng.uniform(0, 180)) if style["rotate"] else 0.0
    color = str(style["colors"][rng.integers(len(style["colors"]))])
    obj = SynthObject(cls, (0, 0), length, angle, color)
    extent = max(stamp(obj)[1].shape)
    return replace(obj, center=_cell_center(rng, cell, size, extent))


@dataclass
class ScenePlan:
    """Objects of one scene, their grid cells, and which of them are twins (position-only)."""

    objects: list[SynthObject]
    cells: list[tuple[int, int]]
    twins: tuple[int, ...] = ()


def plan_scene(
    rng: np.random.Generator,
    size: int,
    classes: Sequence[str],
    *,
    position_only: bool,
    max_objects: int = 5,
) -> ScenePlan:
    """Pick 2–``max_objects`` objects in distinct cells; a position-only scene holds two identical
    twins (plus up to two other objects)."""
    cells = [divmod(int(k), 3) for k in rng.permutation(9)]
    if position_only:
        cls = str(rng.choice(classes))
        twin = _random_object(rng, cls, size, cells[0])
        objects = [
            twin,
            replace(twin, center=_cell_center(rng, cells[1], size, max(stamp(twin)[1].shape))),
        ]
        others = [c for c in classes if c != cls]
        for k in range(int(rng.integers(0, min(2, max_objects - 2) + 1)) if others else 0):
            objects.append(_random_object(rng, str(rng.choice(others)), size, cells[2 + k]))
        return ScenePlan(objects, cells[: len(objects)], twins=(0, 1))
    n = int(rng.integers(2, max_objects + 1))
    kinds = list(
        rng.choice(classes, size=min(len(classes), n, int(rng.integers(1, 4))), replace=False)
    )
    chosen = kinds + [kinds[int(rng.integers(len(kinds)))] for _ in range(n - len(kinds))]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    objects = [_random_object(rng, str(c), size, cells[i]) for i, c in enumerate(chosen)]
    return ScenePlan(objects, cells[:n])


def describe(
    rng: np.random.Generator, plan: ScenePlan, target: int, *, relational: float = 0.2
) -> str:
    """An unambiguous RRSIS-D-style expression for ``plan.objects[target]``."""
    obj, cell = plan.objects[target], plan.cells[target]
    same = [i for i, o in enumerate(plan.objects) if o.cls == obj.cls]
    if target in plan.twins:
        return f"the {obj.cls} {GRID_PHRASES[cell]}"
    colour = f"{obj.color} " if obj.color and rng.random() < 0.3 else ""
    if rng.random() < relational:
        options = []
        for j, anchor in enumerate(plan.objects):
            if anchor.cls == obj.cls or sum(o.cls == anchor.cls for o in plan.objects) != 1:
                continue
            for phrase, sign in RELATIONS:

                def holds(i: int, sign: tuple[int, int] = sign, j: int = j) -> bool:
                    d = (plan.cells[i][0] - plan.cells[j][0], plan.cells[i][1] - plan.cells[j][1])
                    return all(s == 0 or np.sign(v) == s for v, s in zip(d, sign, strict=True))

                if holds(target) and not any(holds(i) for i in same if i != target):
                    options.append(f"the {colour}{obj.cls} {phrase} the {anchor.cls}")
        if options:
            return str(options[int(rng.integers(len(options)))])
    if len(same) == 1 and rng.random() < 0.3:
        return f"the {colour}{obj.cls}"
    return f"the {colour}{obj.cls} {GRID_PHRASES[cell]}"


# --------------------------------------------------------------------------- dataset writer


@dataclass
class SynthSummary:
    """What :func:`generate_synth` wrote."""

    root: Path
    refs: dict[str, int]
    scenes: dict[str, int]
    position_only: dict[str, int]
    classes: tuple[str, ...]
    size: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "refs": self.refs, "scenes": self.scenes,
            "position_only": self.position_only, "classes": list(self.classes),
            "size": self.size, "seed": self.seed,
        }  # fmt: skip


def generate_synth(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    size: int = 320,
    classes: Sequence[str] = SYNTH_CLASSES,
    refs_per_scene: int = 3,
    position_only_fraction: float = 0.3,
    relational_fraction: float = 0.2,
    max_objects: int = 4,
    overwrite: bool = False,
    on_scene: Callable[[], None] | None = None,
) -> SynthSummary:
    """Write a synthetic referring dataset in the RRSIS-D layout to ``out_dir`` (atomically).

    ``counts`` are refs per split (default train 600, val 100, test 100). Scenes of a split come
    from ``seed``, the split and the scene number only, so changing one split's count leaves the
    others unchanged. The defaults (up to 4 objects, 3 refs per scene) were the faster to learn
    of the settings tried with fianet-tiny at 128² on CPU: several targets per image make the
    expression, not the image, decide the mask.
    """
    counts = dict(counts or {"train": 600, "val": 100, "test": 100})
    _validate(counts, size, classes, refs_per_scene, position_only_fraction, relational_fraction)
    if not 2 <= max_objects <= 9:
        raise FiacliError(f"objects per scene must be between 2 and 9, got {max_objects}")
    refs: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    summary = SynthSummary(Path(out_dir), {}, {}, {}, tuple(classes), size, seed)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        jpeg_dir = tmp / RRSISD_IMAGES
        jpeg_dir.mkdir(parents=True)
        (tmp / RRSISD_REFS).parent.mkdir(parents=True, exist_ok=True)
        for split in counts:
            s, want, scene = SPLITS.index(split), counts[split], 0
            summary.refs[split] = summary.position_only[split] = 0
            while summary.refs[split] < want:
                rng = np.random.default_rng([seed, s, scene])
                twins = rng.random() < position_only_fraction
                plan = plan_scene(rng, size, classes, position_only=twins, max_objects=max_objects)
                image, labels = draw_scene(rng, size, plan.objects)
                image_id = len(images)
                file_name = f"{image_id:05d}.jpg"
                Image.fromarray(image).save(jpeg_dir / file_name, quality=95)
                images.append(
                    {"id": image_id, "file_name": file_name, "height": size, "width": size}
                )
                ann_ids = []
                for i, obj in enumerate(plan.objects):
                    ann_ids.append(len(anns))
                    anns.append(_annotation(len(anns), image_id, obj, labels == i + 1))
                targets = list(plan.twins) + [
                    i for i in rng.permutation(len(plan.objects)) if i not in plan.twins
                ]
                for t in targets[: min(refs_per_scene, want - summary.refs[split])]:
                    if anns[ann_ids[t]]["area"] == 0:
                        continue
                    text = describe(rng, plan, t, relational=relational_fraction)
                    refs.append(
                        _ref(len(refs), split, image_id, file_name, plan, t, ann_ids[t], text, rng)
                    )
                    summary.refs[split] += 1
                    summary.position_only[split] += int(t in plan.twins)
                scene += 1
                if on_scene is not None:
                    on_scene()
            summary.scenes[split] = scene
        instances = {
            "info": {"description": SYNTH_MARKER, "seed": seed, "size": size, "counts": counts},
            "images": images,
            "annotations": anns,
            "categories": [{"id": i, "name": n} for i, n in enumerate(SYNTH.classes)],
        }
        (tmp / RRSISD_INSTANCES).write_text(json.dumps(instances), encoding="utf-8")
        with open(tmp / RRSISD_REFS, "wb") as f:
            pickle.dump(refs, f, protocol=2)
    return summary


def _annotation(ann_id: int, image_id: int, obj: SynthObject, mask: np.ndarray) -> dict[str, Any]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    bbox = (
        [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1] if rows.size else [0] * 4
    )
    return {
        "id": ann_id,
        "image_id": image_id,
        "categories_id": SYNTH.classes.index(obj.cls),  # sic: RRSIS-D's key
        "bbox": bbox,  # x1, y1, x2, y2 as in RRSIS-D
        "segmentation": [encode(mask)],
        "area": int(mask.sum()),
        "iscrowd": 0,
    }


def _ref(
    ref_id: int, split: str, image_id: int, file_name: str, plan: ScenePlan, target: int,
    ann_id: int, text: str, rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    raw = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    return {
        "image_id": image_id,
        "split": split,
        "sentences": [{"tokens": text.split(), "raw": raw, "sent_id": ref_id, "sent": text}],
        "file_name": file_name,
        "category_id": SYNTH.classes.index(plan.objects[target].cls),
        "ann_id": ann_id,
        "sent_ids": [ref_id],
        "ref_id": ref_id,
        "position_only": target in plan.twins,
    }


def _validate(
    counts: Mapping[str, int], size: int, classes: Sequence[str], refs_per_scene: int,
    position_only: float, relational: float,
) -> None:  # fmt: skip
    unknown = [c for c in classes if c not in CLASS_STYLES]
    if unknown or not classes:
        raise FiacliError(
            f"unknown object class(es) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(SYNTH_CLASSES)}"
        )
    bad = [f"{k}={v}" for k, v in counts.items() if k not in SPLITS or v < 0]
    if bad or not any(counts.values()):
        raise FiacliError(
            f"refs per split must be ≥ 0 for train/val/test, not all 0 (got {dict(counts)})"
        )
    if not 64 <= size <= 4096:
        raise FiacliError(f"--size must be between 64 and 4096 pixels, got {size}")
    if refs_per_scene < 1:
        raise FiacliError(f"refs per scene must be at least 1, got {refs_per_scene}")
    for name, v in (("position-only fraction", position_only), ("relational fraction", relational)):
        if not 0 <= v <= 1:
            raise FiacliError(f"{name} must be in [0, 1], got {v}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``path`` and rename it when complete.

    Replacing an existing folder needs ``overwrite`` and is refused unless that folder is itself a
    synthetic dataset, so a mistyped ``-o`` cannot delete unrelated data.
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise FiacliError(f"output folder does not exist: {parent}")
    if final.exists():
        if not overwrite:
            raise FiacliError(f"{final} already exists; pass -f/--overwrite to replace it")
        if not is_synth_dataset(final):
            raise FiacliError(f"refusing to replace {final}: it is not a fiacli synthetic dataset")
    sweep_stale(parent)
    tmp = temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if final.exists():
            old = parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise FiacliError(f"disk full while writing {final}; nothing was written") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_synth_dataset(path: Path) -> bool:
    """True if ``path`` is empty or was written by :func:`generate_synth`."""
    if path.is_dir() and not any(path.iterdir()):
        return True
    try:
        with open(path / RRSISD_INSTANCES, encoding="utf-8") as f:
            head = f.read(200)
    except OSError:
        return False
    return SYNTH_MARKER in head

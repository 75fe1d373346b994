"""Quicklook PNG of a segmentation: the scene, shrunk, with what was found outlined in colour.

For people who would rather look than open a GIS. The scene is read once at preview size (from
its overviews when it has them, a decimated read otherwise; never at full resolution in memory),
polygons are drawn as coloured outlines, and objects too small to see at that scale get a ring
around them so that they still stand out. The expression is the title; a footer gives the scene's
size, CRS and pixel size. The PNG's text chunks record the title and where the map sits in the
image (``fiacli:map_box``), so tools and tests can find it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.errors import UsageError

PREVIEW_SUFFIXES = (".png",)
MAX_SIDE = 1024  # the longer side of the map in the preview
# outline colours, one per expression: saturated hues that neither aerial imagery nor the
# synthetic scenes contain exactly, so an outline pixel is never confused with the scene
COLORS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 255, 0), (255, 0, 0))
SMALL_PX = 8  # objects smaller than this in the preview also get a ring
TITLE_PX = 22
FOOTER_PX = 14


def check_preview_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in PREVIEW_SUFFIXES:
        raise UsageError(f"--preview writes a PNG; give a .png path, not {p}")
    return p


def preview_shape(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Preview size keeping the aspect ratio; never larger than the scene."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class Layer:
    """Polygons of one expression, in scene *pixel* coordinates (column, row)."""

    label: str
    geometries: Sequence[Any]  # shapely polygons


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _rings(geom: Any) -> list[np.ndarray]:
    polys = getattr(geom, "geoms", [geom])
    out = []
    for poly in polys:
        out.append(np.asarray(poly.exterior.coords))
        out.extend(np.asarray(r.coords) for r in poly.interiors)
    return out


def render_preview(
    rgb: np.ndarray,
    layers: Sequence[Layer],
    *,
    scale: tuple[float, float],
    footer: str = "",
) -> tuple[Any, tuple[int, int, int, int]]:
    """The preview image and the box ``(x0, y0, x1, y1)`` of the map inside it.

    ``rgb`` is the shrunk scene (h×w×3 uint8); ``scale`` maps scene pixels to preview pixels
    as (x, y) factors.
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    n_title = max(1, len(layers))
    top = TITLE_PX * n_title + 6
    canvas = Image.new("RGB", (max(w, 320), top + h + FOOTER_PX + 6), (255, 255, 255))
    x_off = (canvas.width - w) // 2
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (x_off, top))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(h, w) / 400))
    sx, sy = scale
    title_font, small_font = _font(TITLE_PX - 6), _font(FOOTER_PX - 2)
    for k, layer in enumerate(layers):
        color = COLORS[k % len(COLORS)]
        y = 3 + k * TITLE_PX
        draw.rectangle((6, y + 4, 6 + TITLE_PX - 10, y + TITLE_PX - 6), outline=color, width=3)
        found = len(layer.geometries)
        note = "" if found else "  (nothing found)"
        draw.text((TITLE_PX + 2, y + 1), f"{layer.label}{note}", fill=(0, 0, 0), font=title_font)
        for geom in layer.geometries:
            rings = _rings(geom)
            for ring in rings:
                pts = ring * (sx, sy) + (x_off, top)
                draw.line([tuple(p) for p in pts], fill=color, width=width, joint="curve")
            x0, y0, x1, y1 = geom.bounds
            if max((x1 - x0) * sx, (y1 - y0) * sy) < SMALL_PX:  # too small to see: ring it
                cx, cy = (x0 + x1) / 2 * sx + x_off, (y0 + y1) / 2 * sy + top
                r = SMALL_PX + width
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=width)
    draw.text((6, top + h + 3), footer, fill=(60, 60, 60), font=small_font)
    return canvas, (x_off, top, x_off + w, top + h)


def _footer(scene: Any, n: int) -> str:
    parts = [Path(scene.path).name, f"{scene.width:,} x {scene.height:,} px"]
    if scene.crs is not None:
        parts.append(scene.crs.to_string())
        t = scene.transform
        parts.append(f"{abs(t.a):g} x {abs(t.e):g} {_units(scene.crs)}/px")
    parts.append(f"{n} polygon{'s' if n != 1 else ''}")
    return " · ".join(parts)


def _units(crs: Any) -> str:
    if crs.is_geographic:
        return "°"
    name = (crs.linear_units or "").lower()
    return "m" if name in ("metre", "meter", "m") else name or "units"


def write_scene_preview(
    path: str | os.PathLike[str],
    scene: Any,
    frames: Sequence[Any],
    labels: Sequence[str],
    *,
    max_side: int = MAX_SIDE,
) -> Path:
    """Draw ``frames`` (GeoDataFrames in the scene's CRS, one per label) over ``scene`` (an
    open :class:`fiacli.raster.Scene`) and save the PNG at ``path`` (already a temporary name:
    the caller makes it atomic)."""
    import shapely
    from PIL.PngImagePlugin import PngInfo

    h, w = preview_shape(scene.height, scene.width, max_side)
    rgb, _ = scene.read_overview(h, w)
    inv = ~scene.transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:  # map coordinates -> (column, row)
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack((inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f))

    layers = []
    for frame, label in zip(frames, labels, strict=True):
        geoms = np.asarray(frame.geometry.values, dtype=object)
        if len(geoms):
            geoms = shapely.transform(geoms, to_pixels)
        layers.append(Layer(label, list(geoms)))
    image, box = render_preview(
        rgb.transpose(1, 2, 0),
        layers,
        scale=(w / scene.width, h / scene.height),
        footer=_footer(scene, sum(len(f) for f in frames)),
    )
    info = PngInfo()
    info.add_text("Title", " | ".join(labels))
    info.add_text("Software", "fiacli")
    info.add_text("fiacli:map_box", ",".join(map(str, box)))
    info.add_text("fiacli:colors", ";".join(",".join(map(str, COLORS[k % len(COLORS)]))
                                            for k in range(len(labels))))  # fmt: skip
    image.save(path, format="PNG", pnginfo=info, optimize=True)
    return Path(path)

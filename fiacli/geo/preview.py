"""Quicklook PNG of a segmentation: the scene, shrunk, with what was found outlined in colour.

For people who would rather look than open a GIS. The scene is read once at preview size (from
its overviews when it has them, a decimated read otherwise; never at full resolution in memory),
polygons are drawn as coloured outlines, and objects too small to see at that scale get a ring
around them so that they still stand out. When the scene is shrunk a lot, a zoomed inset beside
the map shows the largest polygon at full resolution (one small window read), its place marked on
the map. The expression is the title; a footer gives the scene's size, CRS and pixel size. The
PNG's text chunks record the title and where the map sits in the image (``fiacli:map_box``), so
tools and tests can find it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.errors import UsageError

PREVIEW_SUFFIXES = (".png",)
MAX_SIDE = 1024  # the longer side of the map in the preview
# outline colours, one per expression: saturated hues that neither aerial imagery nor the
# synthetic scenes contain exactly, so an outline pixel is never confused with the scene
COLORS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 255, 0), (255, 0, 0))
SMALL_PX = 12  # objects smaller than this in the preview also get a ring
TITLE_PX = 22
FOOTER_PX = 14
INSET_PX = 256  # side of the zoomed inset
INSET_MIN_ZOOM = 2.0  # no inset when the map is shrunk less than this


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


@dataclass
class Inset:
    """A full-resolution window of the scene, shown enlarged beside the map."""

    rgb: np.ndarray  # h×w×3 uint8 as read
    col: int  # window origin in scene pixels
    row: int


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


def _outline(draw: Any, geoms: Sequence[Any], color: tuple[int, int, int], width: int,
             scale: tuple[float, float], offset: tuple[float, float]) -> None:  # fmt: skip
    """Draw polygons (scene pixels) at ``scale`` + ``offset``; ring those too small to see."""
    (sx, sy), (ox, oy) = scale, offset
    for geom in geoms:
        for ring in _rings(geom):
            pts = ring * (sx, sy) + (ox, oy)
            draw.line([tuple(p) for p in pts], fill=color, width=width, joint="curve")
        x0, y0, x1, y1 = geom.bounds
        if max((x1 - x0) * sx, (y1 - y0) * sy) < SMALL_PX:
            cx, cy = (x0 + x1) / 2 * sx + ox, (y0 + y1) / 2 * sy + oy
            r = SMALL_PX + width
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=width)


def render_preview(
    rgb: np.ndarray,
    layers: Sequence[Layer],
    *,
    scale: tuple[float, float],
    footer: str = "",
    inset: Inset | None = None,
) -> tuple[Any, tuple[int, int, int, int]]:
    """The preview image and the box ``(x0, y0, x1, y1)`` of the map inside it.

    ``rgb`` is the shrunk scene (h×w×3 uint8); ``scale`` maps scene pixels to preview pixels
    as (x, y) factors; ``inset`` adds a zoomed full-resolution window on the right.
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    top = TITLE_PX * max(1, len(layers)) + 6
    side = INSET_PX + 18 if inset is not None else 0  # 12 px gap, 6 px margin
    canvas = Image.new("RGB", (max(w + side, 320), top + h + FOOTER_PX + 6), (255, 255, 255))
    x_off = (canvas.width - side - w) // 2
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (x_off, top))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(h, w) / 400))
    title_font, small_font = _font(TITLE_PX - 6), _font(FOOTER_PX - 2)
    for k, layer in enumerate(layers):
        color = COLORS[k % len(COLORS)]
        y = 3 + k * TITLE_PX
        draw.rectangle((6, y + 4, 6 + TITLE_PX - 10, y + TITLE_PX - 6), outline=color, width=3)
        note = "" if len(layer.geometries) else "  (nothing found)"
        draw.text((TITLE_PX + 2, y + 1), f"{layer.label}{note}", fill=(0, 0, 0), font=title_font)
        _outline(draw, layer.geometries, color, width, scale, (x_off, top))
    if inset is not None:
        ih, iw = inset.rgb.shape[:2]
        zoom = INSET_PX / max(ih, iw)
        ix, iy = x_off + w + 12, top
        view = Image.fromarray(np.ascontiguousarray(inset.rgb))
        canvas.paste(view.resize((round(iw * zoom), round(ih * zoom)), Image.NEAREST), (ix, iy))
        for k, layer in enumerate(layers):
            shifted = [_shift(g, -inset.col, -inset.row) for g in layer.geometries]
            _outline(draw, shifted, COLORS[k % len(COLORS)], 2, (zoom, zoom), (ix, iy))
        canvas.paste((255, 255, 255), (ix, iy + round(ih * zoom), ix + INSET_PX, top + h))
        draw.rectangle((ix - 1, iy - 1, ix + round(iw * zoom), iy + round(ih * zoom)),
                       outline=(0, 0, 0))  # fmt: skip
        mag = zoom / min(scale)
        draw.text((ix, iy + round(ih * zoom) + 4), f"zoom x{mag:.0f}: largest polygon",
                  fill=(60, 60, 60), font=small_font)  # fmt: skip
        (sx, sy) = scale  # the inset's place on the map, in white
        box = (x_off + inset.col * sx, top + inset.row * sy, x_off + (inset.col + iw) * sx,
               top + (inset.row + ih) * sy)  # fmt: skip
        draw.rectangle(box, outline=(255, 255, 255), width=1)
    draw.text((6, top + h + 3), footer, fill=(60, 60, 60), font=small_font)
    return canvas, (x_off, top, x_off + w, top + h)


def _shift(geom: Any, dx: float, dy: float) -> Any:
    import shapely

    return shapely.transform(geom, lambda xy: xy + (dx, dy))


def _inset(scene: Any, layers: Sequence[Layer], scale: float) -> Inset | None:
    """The full-resolution window around the largest polygon, when the map shrinks a lot."""
    from rasterio.windows import Window

    geoms = [g for layer in layers for g in layer.geometries]
    if not geoms or 1 / scale < INSET_MIN_ZOOM:
        return None
    largest = max(geoms, key=lambda g: g.area)
    x0, y0, x1, y1 = largest.bounds
    side = int(min(max(4 * max(x1 - x0, y1 - y0), 96), 512, scene.width, scene.height))
    col = int(min(max((x0 + x1) / 2 - side / 2, 0), scene.width - side))
    row = int(min(max((y0 + y1) / 2 - side / 2, 0), scene.height - side))
    rgb, _ = scene.read(Window(col, row, side, side))
    return Inset(rgb.transpose(1, 2, 0), col, row)


def _footer(scene: Any, n: int, name: str | None = None) -> str:
    parts = [name or Path(scene.path).name, f"{scene.width:,} x {scene.height:,} px"]
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
    name: str | None = None,
    polygons: int | None = None,
) -> Path:
    """Draw ``frames`` (GeoDataFrames in the scene's CRS, one per label) over ``scene`` (an
    open :class:`fiacli.geo.raster.Scene`) and save the PNG at ``path`` (already a temporary name:
    the caller makes it atomic). The footer names the scene (``name``: when ``scene`` is a view
    of it) and counts the polygons (``polygons``: when some frames are not results)."""
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
    scale = (w / scene.width, h / scene.height)
    image, box = render_preview(
        rgb.transpose(1, 2, 0),
        layers,
        scale=scale,
        footer=_footer(scene, sum(len(f) for f in frames) if polygons is None else polygons, name),
        inset=_inset(scene, layers, max(scale)),
    )
    info = PngInfo()
    info.add_text("Title", " | ".join(labels))
    info.add_text("Software", "fiacli")
    info.add_text("fiacli:map_box", ",".join(map(str, box)))
    info.add_text("fiacli:colors", ";".join(",".join(map(str, COLORS[k % len(COLORS)]))
                                            for k in range(len(labels))))  # fmt: skip
    image.save(path, format="PNG", pnginfo=info, optimize=True)
    return Path(path)

"""Benchmark for ``fiacli segment --aoi``: only the areas of interest are read and run.

    python bench/aoi.py                      # 20,000² scene, ten 500 m x 500 m AOIs (minutes)
    python bench/aoi.py --size 8000          # a smaller scene, same AOIs (about a minute)

One run, three timings, the same near-free numpy model (``bench/segment.py``'s ``NumpyModel``,
p = red / 255, so the figures are the pipeline's own reading, stitching and writing):

* ``whole``: ``segment_raster`` over the whole scene (mask + polygons);
* ``aois``: ``segment_areas`` with the ten AOIs (mask over the union, in the scene's grid, +
  polygons tagged with their AOI);
* ``windows``: ``segment_raster`` on each AOI's window cut beforehand into a GeoTIFF of its own
  (the cutting is not timed): what those windows cost by themselves.

Printed: the seconds, ``whole / aois`` (the saving; about the ratio of chips, ~30 at 20,000²),
``aois / windows`` (what the AOI machinery adds to the windows themselves: VRTs, clipping,
merging into the scene-grid raster; ~1 means "the time is the time of those windows"), the
chips each ran and the load average. ``projected_with_model_s`` adds ``--model-s`` seconds per
chip (default 2.86: fianet-swinb on 2 CPU cores, README) to each figure, for what a real model
would make of it: the ratio then tends to the ratio of chips. The scene is 0.5 m per pixel,
so a 500 m AOI is 1,000² px: larger than 2 chips of 480, each is a scene of its own of 3 x 3
chips. ``--repeats N`` runs the three N times, alternating, and prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from segment import NumpyModel, load_average, make_scene  # noqa: E402  (bench/segment.py)

GSD = 0.5  # metres per pixel of make_scene's scenes
ORIGIN = (500000.0, 4_200_000.0)


def place_aois(size: int, count: int, side_m: float, seed: int = 0) -> list:
    """``count`` non-overlapping squares of ``side_m`` metres inside a ``size``² px scene."""
    import shapely

    rng = np.random.default_rng(seed)
    side = side_m / GSD
    if side * 1.5 > size:
        raise SystemExit(f"--size {size} is too small for AOIs of {side_m} m")
    boxes: list = []
    tries = 0
    while len(boxes) < count:
        tries += 1
        if tries > 10_000:
            raise SystemExit(f"cannot place {count} AOIs of {side_m} m in {size}² px")
        col, row = rng.uniform(0, size - side, 2)
        x0, y1 = ORIGIN[0] + col * GSD, ORIGIN[1] - row * GSD
        box = shapely.box(x0, y1 - side_m, x0 + side_m, y1)
        if all(not box.intersects(b) for b in boxes):
            boxes.append(box)
    return boxes


def cut_windows(scene: Path, boxes: list, folder: Path) -> list[Path]:
    """Each AOI's window of ``scene`` as a GeoTIFF of its own (not timed)."""
    import rasterio
    from rasterio.windows import from_bounds

    paths = []
    with rasterio.open(scene) as src:
        for k, box in enumerate(boxes):
            window = (
                from_bounds(*box.bounds, transform=src.transform).round_offsets().round_lengths()
            )
            profile = {**src.profile, "width": int(window.width), "height": int(window.height),
                       "transform": src.window_transform(window)}  # fmt: skip
            path = folder / f"window-{k}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            paths.append(path)
    return paths


def run(size: int, count: int, side_m: float, repeats: int, folder: Path,
        model_s: float = 2.86) -> dict:  # fmt: skip
    import geopandas as gpd

    from fiacli.app.areas import segment_areas
    from fiacli.app.pipeline import segment_raster

    t0 = time.perf_counter()
    scene = make_scene(folder / f"scene{size}.tif", size, bright_share=0.01)
    made = time.perf_counter() - t0
    boxes = place_aois(size, count, side_m)
    aois = gpd.GeoDataFrame({"name": [f"aoi-{k}" for k in range(count)]}, geometry=boxes,
                            crs="EPSG:32633")  # fmt: skip
    windows = cut_windows(scene, boxes, folder)
    model = NumpyModel()
    text = "the red roof"
    times: dict[str, list[float]] = {"whole": [], "aois": [], "windows": []}
    chips: dict[str, int] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        whole = segment_raster(scene, text, [folder / "whole.tif", folder / "whole.gpkg"],
                               predictor=model, overwrite=True)  # fmt: skip
        times["whole"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        areas = segment_areas(scene, text, [folder / "aoi.tif", folder / "aoi.gpkg"], aoi=aois,
                              keep_fields="name", predictor=model, overwrite=True)  # fmt: skip
        times["aois"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cut = 0
        for k, path in enumerate(windows):
            r = segment_raster(path, text, [folder / f"w{k}.tif", folder / f"w{k}.gpkg"],
                               predictor=model, overwrite=True)  # fmt: skip
            cut += r.chips["total"]
        times["windows"].append(time.perf_counter() - t0)
        chips = {"whole": whole.chips["total"], "aois": areas.chips["total"], "windows": cut}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "scene": f"{size}x{size} px at {GSD} m ({size * GSD / 1000:g} km square)",
        "aois": f"{count} x {side_m:g} m square ({side_m / GSD:g}² px each), "
        f"{count * (side_m / GSD) ** 2 / size**2:.2%} of the scene",
        "generate_scene_s": round(made, 1),
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "whole_over_aois": round(med["whole"] / med["aois"], 1),
        "aois_over_windows": round(med["aois"] / med["windows"], 3),
        "chips": chips,
        "chips_whole_over_aois": round(chips["whole"] / max(chips["aois"], 1), 1),
        "projected_with_model_s": {
            "seconds_per_chip": model_s,
            "whole": round(med["whole"] + model_s * chips["whole"], 1),
            "aois": round(med["aois"] + model_s * chips["aois"], 1),
            "whole_over_aois": round(
                (med["whole"] + model_s * chips["whole"]) / (med["aois"] + model_s * chips["aois"]),
                1,
            ),  # fmt: skip
        },
        "aoi_pictures": sorted({a["picture"]["mode"] for a in areas.areas}),
        "aoi_timings_s": areas.timings_s,
        "load_average": load_average(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20_000, help="scene side in pixels (0.5 m)")
    ap.add_argument("--count", type=int, default=10, help="number of AOIs")
    ap.add_argument("--aoi-m", type=float, default=500.0, help="AOI side in metres")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three runs (medians)")
    ap.add_argument("--model-s", type=float, default=2.86,
                    help="seconds per chip of a real model, for the projected figures")  # fmt: skip
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fiacli-bench-aoi-") as tmp:
        report = run(args.size, args.count, args.aoi_m, args.repeats, Path(tmp), args.model_s)
    print(json.dumps({"aoi": report}, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()

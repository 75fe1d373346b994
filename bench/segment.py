"""Benchmarks for ``fiacli segment``: pipeline overhead, peak memory vs scene size, vectorisation.

    python bench/segment.py                  # all three, full sizes (tens of minutes on 2 CPUs)
    python bench/segment.py --quick          # smaller scenes, a few minutes
    python bench/segment.py --only overhead  # or memory, vector, throughput, codecs

Figures are ratios measured within one run, so a shared, noisy machine affects them less than
absolute times; the load average is printed alongside.

* overhead: end-to-end ``segment_raster`` time / pure model time on the same chips, same process
  (target <= 1.05); model time = encoding the expression once + predicting every chip. Three
  rounds (``--pairs``) of a pure and an end-to-end run, in turn pure first and end-to-end first
  (so that neither always runs in the other's wake), the ratio taken within each round and the
  median kept, so a load that drifts between rounds cancels. Also printed: end-to-end
  time / the model time measured inside that same run (immune to load changes between runs)
  and process CPU time (all threads; note torch's OpenMP threads spin while waiting, so it
  too grows with load).
  Model: a random-weight ``fianet-tiny`` on CPU, whose noisy masks (about half the scene, tens
  of thousands of vertices) are the worst case for vectorising; ``--model demo``: the bundled,
  trained ``fianet-tiny-demo`` on the bundled demo scene (sparse masks, as real use gives);
  ``--model numpy`` checks the plumbing with a near-free model, where the ratio means nothing.
* memory: peak RSS of the last scene / peak RSS of the first (default 20,000² vs 2,000²), each
  in a fresh subprocess (target <= 1.15), every output written (mask, probabilities, polygons).
  Default model: a random-weight ``fianet-tiny`` (the 2,704 chips of the 20,000² scene take
  about 7 minutes on 2 CPUs; its noisy masks give ~50,000 polygons, a stress test for the
  polygon spool). ``--memory-model numpy`` (p = red / 255) isolates the pipeline's own buffers.
  The 2,000² peak varies by about ±30 MB between runs (1,318-1,387 MB seen). Scenes are
  written window by window, DEFLATE-compressed.
* vector: seconds to vectorise a 10,000² mask with many objects, window by window, and a check
  that the result equals GDAL's whole-scene polygonize.
* throughput: the pipeline alone (the near-free NumpyModel) on a 10,240² RGB orthophoto (real
  aerial texture: ../shared/rasters/cogeo.tif mirrored, else synthetic; JPEG-YCbCr, 512-px
  tiles, overviews), generated once into ``--cache`` (default ~/.cache/fiacli-bench): end to
  end Mpx/s and each stage's busy/waiting seconds for the mask, mask + probabilities and
  polygons of the (noisy) mask, with 1 thread and with every CPU, next to GDAL's raw decoding of
  the same file (whole 512-row strips, 1 thread and every CPU) measured in the same run, between
  the pipeline runs: the ratio to it is the figure (targets on 2 cores: mask >= 0.6x the
  all-CPU decode). ``--quick``: a 4,096² orthophoto.
* codecs: the mask and probabilities of that orthophoto written with DEFLATE and ZSTD at a few
  levels, on 1 thread and on every CPU (GDAL's NUM_THREADS): seconds to write, to build the
  overviews, and megabytes (fiacli.geo.raster.COMPRESS was chosen on these figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

HERE = Path(__file__).resolve()


class NumpyModel:
    """A near-free ChipPredictor: probability = red / 255 (float32, one pass)."""

    image_size = 480

    def encode(self, expression: str, *, drop_position: bool = False) -> str:
        return expression

    def predict(self, chips: np.ndarray, encoded: str) -> np.ndarray:
        return np.divide(chips[:, 0], np.float32(255), dtype=np.float32)


def load_model(kind: str, folder: Path):
    if kind == "numpy":
        return NumpyModel()
    if kind == "demo":  # the bundled, trained fianet-tiny-demo
        from fiacli.app.demo import demo_model_path
        from fiacli.app.predictor import RefSegPredictor

        return RefSegPredictor.from_checkpoint(demo_model_path(), device="cpu")
    import torch

    from fiacli.app.predictor import RefSegPredictor
    from fiacli.models import create_model, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    torch.manual_seed(0)
    path = save_checkpoint(folder / "tiny.safetensors", create_model("fianet-tiny"),
                           {"parse": ParseSettings().to_dict()})  # fmt: skip
    return RefSegPredictor.from_checkpoint(path, device="cpu")


def make_scene(path: Path, width: int, height: int | None = None, *, seed: int = 0,
               bright_share: float = 0.01) -> Path:  # fmt: skip
    """An RGB scene of 64-px cells with random colours; ``bright_share`` of them are bright red.

    Written in 512-row strips (memory stays small), tiled and DEFLATE-compressed (disk too).
    """
    height = height or width
    rng = np.random.default_rng(seed)
    cell = 64
    cols = -(-width // cell)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4_200_000),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   predictor=2, BIGTIFF="IF_SAFER")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        for y0 in range(0, height, 512):
            h = min(512, height - y0)
            colours = rng.integers(0, 120, (3, -(-h // cell), cols), dtype=np.uint8)
            bright = rng.random(colours.shape[1:]) < bright_share
            colours[0][bright] = 230
            strip = colours.repeat(cell, axis=1).repeat(cell, axis=2)[:, :h, :width]
            ds.write(strip, window=Window(0, y0, width, h))
    return path


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_overhead(size: int, kind: str, folder: Path, repeats: int = 3,
                   threads: int | None = None) -> dict:  # fmt: skip
    from fiacli.app.pipeline import segment_raster
    from fiacli.geo.raster import open_scene
    from fiacli.geo.tiling import ChipGrid, ChipReader

    model = load_model(kind, folder)
    scene = make_scene(folder / f"overhead{size}.tif", size, bright_share=0.05)
    text = "the red roof on the left"
    if kind == "demo":  # a trained model on the scene it knows: realistic, sparse masks
        from fiacli.app.demo import DEMO_EXPRESSION, demo_scene_path

        scene, text = demo_scene_path(), DEMO_EXPRESSION
    encoded = model.encode(text)
    with open_scene(scene) as sc:
        grid = ChipGrid(sc.height, sc.width, model.image_size, round(model.image_size / 5))
        with ChipReader(sc, grid, 4) as reader:
            batches = [b.pixels for b in reader]
    model.predict(batches[0][:1], encoded)  # warm-up (first-call allocations)

    def pure() -> tuple[float, float]:  # the model's share of a run: encode once, run chips
        t0, c0 = time.perf_counter(), time.process_time()
        enc = model.encode(text)
        for pixels in batches:
            model.predict(pixels, enc)
        return time.perf_counter() - t0, time.process_time() - c0

    pures, e2es, cpu_pure, cpu_e2e, internal = [], [], [], [], []

    def end_to_end() -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        result = segment_raster(scene, text, [folder / "o.tif", folder / "o.gpkg"],
                                predictor=model, overwrite=True, batch_size=4,
                                threads=threads)  # fmt: skip
        e2es.append(time.perf_counter() - t0)
        cpu_e2e.append(time.process_time() - c0)
        inside = result.timings_s["model"] + result.timings_s["encode"]
        internal.append(e2es[-1] / inside)
        return result

    for i in range(repeats):  # pairs in turn pure-first and e2e-first
        if i % 2:
            result = end_to_end()
        wall, cpu = pure()
        pures.append(wall)
        cpu_pure.append(cpu)
        if not i % 2:
            result = end_to_end()
    return {
        "scene": f"{size}x{size}",
        "model": kind,
        "chips": len(grid),
        "pure_model_s": [round(t, 2) for t in pures],
        "end_to_end_s": [round(t, 2) for t in e2es],
        "overhead_ratio_median_of_pairs": round(float(np.median(np.divide(e2es, pures))), 3),
        "overhead_ratio_fastest_over_fastest": round(min(e2es) / min(pures), 3),
        "cpu_time_ratio_median_of_pairs": round(float(np.median(np.divide(cpu_e2e, cpu_pure))), 3),
        "cpu_s_pure_and_end_to_end": [
            [round(a, 1), round(b, 1)] for a, b in zip(cpu_pure, cpu_e2e, strict=True)
        ],  # fmt: skip
        "end_to_end_over_model_time_in_same_run": [round(r, 3) for r in internal],
        "pipeline_timings_s": result.timings_s,
        "threads": result.stages.get("threads"),
        "load_average": load_average(),
    }


def child_memory(scene: str, out: str, kind: str, threads: int | None = None) -> None:
    """Runs in a fresh interpreter: one segmentation, then report RSS figures as JSON."""
    from fiacli.app.pipeline import segment_raster

    folder = Path(out).parent
    model = load_model(kind, folder)
    before = rss_mb("VmRSS")
    t0 = time.perf_counter()
    result = segment_raster(
        scene,
        "the red roof",
        [out, out.replace(".tif", ".gpkg")],
        probabilities=out.replace(".tif", "-p.tif"),
        predictor=model,
        overwrite=True,
        threads=threads,
    )  # every output: mask, probabilities, polygons
    print(json.dumps({"rss_before_mb": round(before, 1), "peak_rss_mb": round(rss_mb(), 1),
                      "seconds": round(time.perf_counter() - t0, 1),
                      "polygons": result.per_expression[0]["polygons"]}))  # fmt: skip


def bench_memory(sizes: list[tuple[int, int]], kind: str, folder: Path,
                 threads: int | None = None) -> dict:  # fmt: skip
    runs = {}
    for width, height in sizes:
        t0 = time.perf_counter()
        scene = make_scene(folder / f"mem{width}x{height}.tif", width, height)
        made = time.perf_counter() - t0
        cmd = [sys.executable, str(HERE), "--_child", str(scene),
               str(folder / f"mem{width}x{height}-o.tif"), "--model", kind]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        record["generate_s"] = round(made, 1)
        record["scene_file_mb"] = round(scene.stat().st_size / 2**20, 1)
        runs[f"{width}x{height}"] = record
        scene.unlink()
    peaks = [r["peak_rss_mb"] for r in runs.values()]
    return {
        "model": kind,
        "threads": threads or "default",
        "runs": runs,
        "peak_rss_ratio_last_over_first": round(peaks[-1] / peaks[0], 3),
        "load_average": load_average(),
    }


def bench_vector(size: int, folder: Path) -> dict:
    import rasterio.features
    import shapely
    from scipy import ndimage

    from fiacli.geo.vectorize import vectorize_raster

    rng = np.random.default_rng(1)
    path = folder / f"mask{size}.tif"
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=255,
                   crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4_200_000),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        for y0 in range(0, size, 1024):
            h = min(1024, size - y0)
            noise = ndimage.uniform_filter(rng.random((h + 8, size)), 7)[4 : 4 + h]
            ds.write((noise > 0.56).astype(np.uint8)[None], window=Window(0, y0, size, h))
    t0 = time.perf_counter()
    regions = vectorize_raster(path)
    t_windowed = time.perf_counter() - t0
    with rasterio.open(path) as ds:
        mask = ds.read(1)
    t0 = time.perf_counter()
    whole = [shapely.geometry.shape(g) for g, _ in
             rasterio.features.shapes(mask, mask=mask == 1, connectivity=4)]  # fmt: skip
    t_whole = time.perf_counter() - t0

    def canon(geoms):
        return sorted(shapely.to_wkb(shapely.normalize(np.asarray(geoms, dtype=object))))

    equal = len(whole) == len(regions) and canon(whole) == canon(regions.geometries)
    return {
        "mask": f"{size}x{size}",
        "polygons": len(regions),
        "windowed_s": round(t_windowed, 2),
        "whole_scene_gdal_s": round(t_whole, 2),
        "windowed_equals_whole_scene": equal,
        "load_average": load_average(),
    }


def cache_folder(given: str | None) -> Path:
    base = given or os.environ.get("FIACLI_BENCH_CACHE") or Path.home() / ".cache" / "fiacli-bench"
    folder = Path(base)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _texture() -> np.ndarray:
    """2,048² RGB aerial texture: ../shared/rasters/cogeo.tif mirrored (seamless), else a
    synthetic one (smoothed noise at three scales)."""
    shared = HERE.parents[2] / "shared" / "rasters" / "cogeo.tif"
    if shared.exists():
        with rasterio.open(shared) as ds:
            tex = ds.read()
        tex = np.concatenate([tex, tex[:, :, ::-1]], axis=2)
        return np.concatenate([tex, tex[:, ::-1, :]], axis=1)
    from scipy import ndimage

    rng = np.random.default_rng(0)
    total = np.zeros((3, 2048, 2048))
    for size, weight in ((3, 0.3), (15, 0.4), (61, 0.3)):
        total += weight * ndimage.uniform_filter(rng.random((3, 2048, 2048)), (1, size, size))
    lo, hi = total.min(), total.max()
    return ((total - lo) / (hi - lo) * 255).astype(np.uint8)


def orthophoto(folder: Path, size: int) -> Path:
    """The throughput scene: ``size``² RGB, JPEG-YCbCr in 512-px tiles, with overviews; made
    once (a few seconds) and kept in ``folder``."""
    path = folder / f"ortho-{size}-jpeg-ycbcr.tif"
    if path.exists() and path.stat().st_size > 0:
        return path
    tile = _texture()
    tmp = path.with_suffix(".tmp-tif")
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=Affine(0.3, 0, 500000, 0, -0.3, 4_200_000),
                   tiled=True, blockxsize=512, blockysize=512, compress="jpeg",
                   photometric="ycbcr", jpeg_quality=85, BIGTIFF="IF_SAFER")  # fmt: skip
    reps = -(-size // tile.shape[2])
    with rasterio.open(tmp, "w", **profile) as ds:
        for y0 in range(0, size, 512):
            h = min(512, size - y0)
            ty = y0 % tile.shape[1]
            strip = np.tile(tile[:, ty : ty + h], (1, 1, reps))[:, :, :size]
            ds.write(strip, window=Window(0, y0, size, h))
    from rasterio.enums import Resampling

    with rasterio.open(tmp, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16], Resampling.average)
    tmp.rename(path)
    return path


def raw_decode(path: Path, threads: int) -> float:
    """GDAL alone: Mpx/s decoding the whole file in 512-row strips on ``threads`` threads,
    each with its own dataset handle (the strips handed out in order)."""
    import threading

    with rasterio.Env(GDAL_CACHEMAX=16 * 2**20):
        handles = [rasterio.open(path) for _ in range(threads)]
        height, width = handles[0].height, handles[0].width
        rows = list(range(0, height, 512))
        lock = threading.Lock()

        def work(ds) -> None:
            while True:
                with lock:
                    if not rows:
                        return
                    y = rows.pop(0)
                ds.read(window=Window(0, y, width, min(512, height - y)))

        t0 = time.perf_counter()
        workers = [threading.Thread(target=work, args=(ds,)) for ds in handles]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        for ds in handles:
            ds.close()
    return height * width / seconds / 1e6


def _minor_faults() -> int:
    """Pages this process has faulted in (fresh memory costs one per 4 KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _run_numpy(scene: Path, outputs: list[Path], threads: int, **kw) -> dict:
    from fiacli.app.pipeline import segment_raster

    t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
    r = segment_raster(scene, "the red roofs", outputs, predictor=NumpyModel(), overwrite=True,
                       threads=threads, manifest=False, **kw)  # fmt: skip
    wall = time.perf_counter() - t0
    faults = _minor_faults() - f0
    px = r.scene["width"] * r.scene["height"]
    stages = {name: {k: v[k] for k in ("threads", "busy_s", "wait_input_s", "wait_output_s")}
              for name, v in r.stages["stages"].items()}  # fmt: skip
    keep = ("read", "model", "stitch_and_write", "stream", "finalize_rasters", "vectorize")
    return {"seconds": round(wall, 2), "mpx_s": round(px / wall / 1e6, 1),
            "cpu_s": round(time.process_time() - c0, 1), "page_faults": faults,
            "bound_by": r.stages["bound_by"],
            "timings_s": {k: r.timings_s[k] for k in keep if k in r.timings_s},
            "stages": stages}  # fmt: skip


def bench_throughput(size: int, folder: Path, cache: Path, rounds: int = 2) -> dict:
    """End-to-end Mpx/s of the pipeline with the near-free model vs GDAL's raw decode."""
    scene = orthophoto(cache, size)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cases = {
        "mask": ([folder / "t.tif"], {}),
        "mask+probabilities": ([folder / "t.tif"], {"probabilities": folder / "t-p.tif"}),
        "polygons": ([folder / "t.gpkg"], {}),
    }
    raw: dict[str, list[float]] = {"1": [], str(cpus): []}
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):  # decode and pipeline interleaved: a load change hits both
        for name, (outs, kw) in cases.items():
            for threads in sorted({1, cpus}):
                raw["1"].append(raw_decode(scene, 1))
                raw[str(cpus)].append(raw_decode(scene, cpus))
                runs.setdefault(f"{name}, {threads} thread(s)", []).append(
                    _run_numpy(scene, outs, threads, **kw))  # fmt: skip
    best_raw = {k: round(max(v), 1) for k, v in raw.items()}
    out: dict = {"scene": f"{size}x{size} JPEG-YCbCr RGB, 512-px tiles", "cpus": cpus,
                 "raw_decode_mpx_s": best_raw,
                 "raw_decode_mpx_s_all_rounds": {k: [round(x, 1) for x in v]
                                                 for k, v in raw.items()},
                 "runs": {}}  # fmt: skip
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["mpx_s"])
        best["mpx_s_all_rounds"] = [r["mpx_s"] for r in rs]
        best["over_raw_decode_all_cpus"] = round(best["mpx_s"] / best_raw[str(cpus)], 3)
        out["runs"][name] = best
    out["load_average"] = load_average()
    return out


def bench_codecs(size: int, cache: Path, folder: Path) -> dict:
    """Writing the mask and the probabilities with each codec: seconds, overviews, size."""
    from rasterio.enums import Resampling

    from fiacli.geo.raster import RasterRowWriter

    scene = orthophoto(cache, size)
    with rasterio.open(scene) as ds:
        red = ds.read(1)  # NumpyModel: probability = red / 255, so the 8-bit map is red
    mask = (red > 127).astype(np.uint8)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report: dict = {"scene": f"{size}x{size}", "zstd_available": _has_zstd(folder)}
    for kind, data in (("mask", mask), ("probabilities", red)):
        for codec, level in (("deflate", 6), ("deflate", 1), ("zstd", 1), ("zstd", 3),
                             ("zstd", 9)):  # fmt: skip
            for threads in sorted({1, cpus}):
                path = folder / f"codec-{kind}-{codec}{level}-{threads}.tif"
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                    t0 = time.perf_counter()
                    w = RasterRowWriter(path, width=size, height=size, count=1,
                                        transform=Affine.identity(), crs=None, threads=threads,
                                        compress_threads=threads,
                                        nodata=255 if kind == "mask" else None,
                                        internal_mask=kind != "mask", compress=codec,
                                        level=level)  # fmt: skip
                    for y in range(0, size, 384):
                        rows = data[None, y : y + 384]
                        w.write(rows, np.ones(rows.shape[1:], bool), all_valid=True)
                    w._flush()
                    t1 = time.perf_counter()
                    resampling = Resampling.nearest if kind == "mask" else Resampling.average
                    w.close(overview_resampling=resampling)
                    t2 = time.perf_counter()
                report[f"{kind} {codec}-{level}, {threads} thread(s)"] = {
                    "write_s": round(t1 - t0, 2), "overviews_s": round(t2 - t1, 2),
                    "mb": round(path.stat().st_size / 2**20, 1)}  # fmt: skip
                path.unlink()
    report["load_average"] = load_average()
    return report


def _has_zstd(folder: Path) -> bool:
    path = folder / "zstd-probe.tif"
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint8",
                       compress="zstd") as ds:  # fmt: skip
        ds.write(np.zeros((1, 16, 16), np.uint8))
    with rasterio.open(path) as ds:
        ok = ds.compression is not None and ds.compression.name == "zstd"
    path.unlink()
    return ok


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller scenes (minutes, not hours)")
    ap.add_argument("--only", default="overhead,memory,vector")
    ap.add_argument("--model", default=None, choices=["fianet-tiny", "demo", "numpy"],
                    help="model for the overhead run (default fianet-tiny)")  # fmt: skip
    ap.add_argument("--memory-model", default="fianet-tiny",
                    choices=["fianet-tiny", "demo", "numpy"])  # fmt: skip
    sizes_help = "WxH,… (default 2000x2000,20000x20000; quick: 1000x1000,6000x6000)"
    ap.add_argument("--memory-sizes", default=None, help=sizes_help)
    ap.add_argument(
        "--cache",
        default=None,
        help="folder for the generated throughput scene (default ~/.cache/fiacli-bench)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="throughput: rounds (best kept)")
    ap.add_argument("--pairs", type=int, default=3,
                    help="overhead: model-only and end-to-end pairs, median ratio")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None,
                    help="overhead/memory: segment's --threads (default: its own default, 1 "
                    "for a model on the CPU)")  # fmt: skip
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child_memory(*args._child, args.model or "numpy", args.threads)
        return
    only = set(args.only.split(","))
    report = {}
    with tempfile.TemporaryDirectory(prefix="fiacli-bench-") as tmp:
        folder = Path(tmp)
        if "overhead" in only:
            size = 1000 if args.quick else 2000
            report["overhead"] = bench_overhead(size, args.model or "fianet-tiny", folder,
                                                repeats=args.pairs,
                                                threads=args.threads)  # fmt: skip
            print(json.dumps({"overhead": report["overhead"]}, indent=2), flush=True)
        if "memory" in only:
            default = "1000x1000,6000x6000" if args.quick else "2000x2000,20000x20000"
            sizes = _sizes(args.memory_sizes or default)
            report["memory"] = bench_memory(sizes, args.memory_model, folder, args.threads)
            print(json.dumps({"memory": report["memory"]}, indent=2), flush=True)
        if "vector" in only:
            size = 4000 if args.quick else 10000
            report["vector"] = bench_vector(size, folder)
            print(json.dumps({"vector": report["vector"]}, indent=2), flush=True)
        if "throughput" in only:
            size = 4096 if args.quick else 10240
            report["throughput"] = bench_throughput(size, folder, cache_folder(args.cache),
                                                    rounds=args.rounds)  # fmt: skip
            print(json.dumps({"throughput": report["throughput"]}, indent=2), flush=True)
        if "codecs" in only:
            size = 4096 if args.quick else 10240
            report["codecs"] = bench_codecs(size, cache_folder(args.cache), folder)
            print(json.dumps({"codecs": report["codecs"]}, indent=2), flush=True)
    print(f"cpus: {os.cpu_count()}, load average at end: {load_average()}")


if __name__ == "__main__":
    main()

"""Benchmarks for scale-out ``fiacli segment`` (fiacli.app.batch, fiacli.app.scaleout).

    python bench/scale.py                     # assembly (10,000² split on 2 ranks) and balance
    python bench/scale.py --size 4000         # a smaller split scene (a minute)
    python bench/scale.py --model demo        # the trained fianet-tiny-demo instead of numpy
    python bench/scale.py --only balance      # or assembly, gpu

Ranks are real: N processes joined by gloo (``FIACLI_DIST_INIT=file://…``, what torchrun's
``env://`` does over TCP), each calling :func:`fiacli.app.batch.segment_many` as ``torchrun -m
fiacli segment`` does.

* assembly: one scene of ``--size``² (64-px cells, 2 % of them bright red: objects, many of
  them across the band seams) split into one band per rank; figure = rank 0's time to assemble
  the outputs (mask GeoTIFF copied from the parts' own rows, seam polygons unioned, GeoPackage
  written) / the job's wall time (target <= 5 %). ``--model numpy`` (p = red / 255, the
  default) is the worst case: a near-free model leaves the pipeline's own work, so the
  assembly's share is as large as it gets; a real model only adds model time to the total.
* balance: a list of unequal scenes (``--scenes``, sizes from 400² to 3,000²) over the ranks,
  largest first to the least-loaded rank; figure = the busiest rank's seconds / the mean
  (1.00 is perfect), with the planned pixels per rank beside it.
* gpu: 1 and 2 ranks sharing one GPU on the same list (the trained demo model); only where
  CUDA is available, otherwise said to be not measured.

The CPUs are shared by the ranks (2 ranks on 2 cores: one core each), and other jobs on the
machine change absolute times; the load average is printed alongside.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
TEXT = "the red roof"


class NumpyModel:
    """A near-free ChipPredictor: probability = red / 255."""

    image_size = 480

    def encode(self, expression: str, *, drop_position: bool = False) -> str:
        return expression

    def predict(self, chips: np.ndarray, encoded: str) -> np.ndarray:
        return chips[:, 0].astype(np.float32) / 255.0


@dataclass
class Loaded:
    predictor: Any
    model_info: dict[str, Any]


def load(kind: str, device: str) -> Loaded:
    if kind == "numpy":
        return Loaded(NumpyModel(), {"path": "numpy", "name": None})
    from fiacli.app.api import load_model

    seg = load_model(None, device=device, quiet=True)  # the bundled fianet-tiny-demo
    return Loaded(seg.predictor, seg.model_info)


def make_scene(path: Path, height: int, width: int, *, seed: int = 0, bright: float = 0.02) -> Path:
    """RGB 64-px cells of random dark colours, ``bright`` of them bright red; tiled, DEFLATE."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    cell, cols = 64, -(-width // 64)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4_200_000),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   predictor=2, BIGTIFF="IF_SAFER")  # fmt: skip
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for y0 in range(0, height, 512):
            h = min(512, height - y0)
            colours = rng.integers(0, 120, (3, -(-h // cell), cols), dtype=np.uint8)
            colours[0][rng.random(colours.shape[1:]) < bright] = 230
            strip = colours.repeat(cell, axis=1).repeat(cell, axis=2)[:, :h, :width]
            ds.write(strip, window=Window(0, y0, width, h))
    os.replace(tmp, path)
    return path


def _rank(rank: int, world: int, init: str, job: dict[str, Any]) -> None:
    """One rank: the environment torchrun would give, then segment_many."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      FIACLI_DIST_INIT=init)  # fmt: skip
    if world == 1:
        os.environ.pop("FIACLI_DIST_INIT")
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from fiacli.app.batch import BatchOptions, segment_many

    device = job["device"] if job["device"] == "cpu" else "cuda:0"  # sharing one GPU
    model = load(job["model"], device)
    t0 = time.perf_counter()
    result = segment_many(job["scenes"], [TEXT], job["outputs"], model=model,
                          batch=BatchOptions(**job["batch"]), overwrite=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if rank == 0:
        Path(job["report"]).write_text(json.dumps({"wall": wall, **result.to_dict()}, default=str))


def run_job(world: int, job: dict[str, Any], folder: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    init = f"file://{folder / f'rendezvous-{time.monotonic_ns()}'}"
    job = {**job, "report": str(folder / "report.json")}
    procs = [ctx.Process(target=_rank, args=(r, world, init, job)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    return json.loads(Path(job["report"]).read_text())


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_assembly(size: int, world: int, kind: str, folder: Path) -> dict[str, Any]:
    scene = make_scene(folder / f"split{size}.tif", size, size)
    out = folder / "assembly"
    out.mkdir(exist_ok=True)
    job = {"scenes": [str(scene)], "outputs": [str(out / "{stem}.tif"), str(out / "{stem}.gpkg")],
           "batch": {"split_scene": True}, "model": kind, "device": "cpu"}  # fmt: skip
    print(f"assembly: {size}² split on {world} ranks, model {kind}, load {load_average()}")
    report = run_job(world, job, folder)
    row = report["scenes"][0]
    total = report["summary"]["seconds"]
    share = row["assembly_seconds"] / total
    manifest = json.loads(Path(row["manifest"]).read_text())
    print(
        f"  job {total:.1f} s (wall {report['wall']:.1f} s), parts {row['parts']}, "
        f"slowest part {manifest['timings_s']['parts_max']:.1f} s, {row['objects']} polygons"
    )
    timings = manifest["timings_s"]
    print(
        f"  assembly {row['assembly_seconds']:.2f} s: rasters {timings['rasters']:.2f} s, "
        f"vectors {timings['vectors']:.2f} s"
    )
    print(f"  assembly / total = {share:.3f} ({share:.1%}; target <= 5 %)")
    return {"assembly_share": share, "total_s": total, "assembly_s": row["assembly_seconds"]}


def unequal_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(h), int(w)) for h, w in rng.integers(400, 3000, (n, 2))]


def bench_balance(n: int, world: int, kind: str, folder: Path, device: str = "cpu") -> dict:
    scenes = [make_scene(folder / f"list{i}-{h}x{w}.tif", h, w, seed=i)
              for i, (h, w) in enumerate(unequal_sizes(n))]  # fmt: skip
    out = folder / f"balance-{world}-{device}"
    out.mkdir(exist_ok=True)
    job = {"scenes": [str(s) for s in scenes], "outputs": [str(out / "{stem}.gpkg")],
           "batch": {"split_above": 1e9}, "model": kind, "device": device}  # fmt: skip
    report = run_job(world, job, folder)
    ranks = report["ranks"]
    pixels = [r["pixels"] for r in ranks]
    pixel_balance = max(pixels) / (sum(pixels) / len(pixels))
    print(
        f"  {world} rank(s) on {device}: job {report['summary']['seconds']:.1f} s; per rank "
        + ", ".join(
            f"{r['units']} scenes {r['pixels'] / 1e6:.1f} Mpx {r['seconds']:.1f} s" for r in ranks
        )  # fmt: skip
        + f"; balance (busiest / mean seconds) {report['balance']:.3f}, pixels {pixel_balance:.3f}"
    )
    return {"balance": report["balance"], "pixel_balance": pixel_balance,
            "seconds": report["summary"]["seconds"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="assembly,balance,gpu")
    ap.add_argument("--size", type=int, default=10_000, help="side of the split scene (px)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=12, help="scenes in the balance list")
    ap.add_argument("--model", default="numpy", choices=["numpy", "demo"])
    ap.add_argument("--folder", type=Path, default=None, help="keep scenes here between runs")
    args = ap.parse_args()
    only = set(args.only.split(","))
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fiacli-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fiacli scale bench in {folder}; {os.cpu_count()} CPUs; load {load_average()}")
    figures: dict[str, Any] = {}
    if "assembly" in only:
        figures["assembly"] = bench_assembly(args.size, args.ranks, args.model, folder)
    if "balance" in only:
        print(f"balance: {args.scenes} unequal scenes, model {args.model}, load {load_average()}")
        figures["balance"] = bench_balance(args.scenes, args.ranks, args.model, folder)
    if "gpu" in only:
        import torch

        if not torch.cuda.is_available():
            print("gpu: not measured (no CUDA device on this machine)")
        else:
            print(f"gpu: 1 and 2 ranks sharing {torch.cuda.get_device_name(0)}, demo model")
            one = bench_balance(args.scenes, 1, "demo", folder, device="cuda")
            two = bench_balance(args.scenes, 2, "demo", folder, device="cuda")
            print(f"  speed-up of 2 ranks on one GPU: {one['seconds'] / two['seconds']:.2f}x")
            figures["gpu"] = {"one": one, "two": two}
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    sys.exit(main())

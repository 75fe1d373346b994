"""Scale-out of ``fiacli segment``: ranks, the work plan, scenes split into bands, assembly.

``torchrun --nproc_per_node N -m fiacli segment …`` starts N ranks (any number of nodes); each
runs on its ``LOCAL_RANK`` GPU (on CPU: gloo). Ranks exchange only small JSON messages (the
input check, the scene sizes, the results), through gloo collectives that are polled, so Ctrl-C
or SIGTERM interrupts a rank at any moment. Files go through the file system every rank sees:
the outputs' folder.

A split scene is cut into bands of chip rows, one per rank. A band's chips lie exactly on the
global chip grid (:func:`split_bands`): it starts at a chip row of the global grid and spans a
whole number of strides plus one chip (or runs to the scene's bottom, where the global grid
shifts its last row back inside the scene). Each band owns the rows its chip rows finalise
(``[ys[a], ys[b + 1])``) and also computes the chips above that reach into them, so every owned
pixel is blended from the same chips with the same weights as in one process; the ``--open``
radius widens that context. Each rank segments its band through a VRT window of the scene,
vectorises its own rows, and keeps apart the polygons touching a seam together with their runs
of pixels along it; rank 0 copies the own rows of every part into one GeoTIFF and unions the
seam polygons whose runs meet across a seam (4-connected, as the streaming vectoriser joins its
windows), so the outputs equal a single process's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.console import warn
from fiacli.core.errors import FiacliError

CHECK_TIMEOUT_S = float(os.environ.get("FIACLI_DIST_CHECK_TIMEOUT", 120))
INIT_TIMEOUT_S = float(os.environ.get("FIACLI_DIST_TIMEOUT", 24 * 3600))
POLL_S = 0.02
READ_ROWS = 512  # rows of a part read at a time during vectorising and assembly
# options a split scene handles exactly; any other option that differs from its default (a newer
# option this module does not know about) keeps the scene whole
SPLIT_SAFE = {
    "chip", "overlap", "blend", "batch_size", "bands", "threshold", "probabilities", "preview",
    "cog", "min_area", "simplify", "open_px", "dst_crs", "allow_ungeoreferenced", "overwrite",
    "manifest", "scope", "resolution", "threads",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# ranks


@dataclass
class Cluster:
    """This process's place in the job; a single process is rank 0 of 1 and needs no torch."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Cluster:
        """torchrun's RANK/WORLD_SIZE/LOCAL_RANK; joins (gloo) the process group when several.

        ``FIACLI_DIST_INIT`` overrides the rendezvous (default ``env://``, what torchrun sets
        up), e.g. ``file:///shared/job-rendezvous`` for processes started another way."""
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return cls()
        from fiacli.training.distributed import env_info

        info = env_info()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            try:
                dist.init_process_group(
                    backend="gloo",
                    init_method=os.environ.get("FIACLI_DIST_INIT", "env://"),
                    rank=info.rank,
                    world_size=info.world_size,
                    timeout=dt.timedelta(seconds=INIT_TIMEOUT_S),
                )
            except (RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise FiacliError(f"rank {info.rank}: cannot join the job ({first})") from None
            owns = True
        return cls(info.rank, info.world_size, info.local_rank, owns)

    def device(self, device: str) -> str:
        """The device this rank uses: its LOCAL_RANK GPU under torchrun (with more ranks than
        GPUs, ranks share them round-robin), CPU stays CPU."""
        if self.world <= 1 or device not in ("auto", "cuda"):
            return device
        import torch

        if not torch.cuda.is_available():
            if device == "cuda":
                raise FiacliError("--device cuda was asked for, but no CUDA GPU is available")
            return "cpu"
        count = torch.cuda.device_count()
        index = self.local_rank % count
        if self.local_rank >= count and self.local_rank == count:
            warn(f"more ranks than GPUs on this node ({count}): ranks share them")
        torch.cuda.set_device(index)
        return f"cuda:{index}"

    def gather(self, obj: Any, *, timeout: float | None = None, what: str = "exchange") -> list:
        """Every rank's JSON-able ``obj``, in rank order, on every rank (``[obj]`` alone)."""
        if self.world <= 1:
            return [obj]
        import torch
        import torch.distributed as dist

        data = json.dumps(obj, default=str).encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._wait(dist.all_gather(sizes, size, async_op=True), deadline, what)
        longest = int(max(int(s) for s in sizes))
        buf = torch.zeros(max(longest, 1), dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = [torch.zeros_like(buf) for _ in range(self.world)]
        self._wait(dist.all_gather(bufs, buf, async_op=True), deadline, what)
        return [
            json.loads(bytes(b[: int(n)].numpy()).decode())
            for b, n in zip(bufs, sizes, strict=True)
        ]

    def broadcast(self, obj: Any, *, what: str = "exchange") -> Any:
        """Rank 0's ``obj`` on every rank."""
        return self.gather(obj if self.is_main else None, what=what)[0]

    def _wait(self, work: Any, deadline: float | None, what: str) -> None:
        """Wait for a collective while staying interruptible (Ctrl-C, SIGTERM) and bounded."""
        while not work.is_completed():
            if deadline is not None and time.monotonic() > deadline:
                raise FiacliError(
                    f"rank {self.rank}: {what}: not every rank answered within "
                    f"{CHECK_TIMEOUT_S:.0f} s (are all ranks running the same command?)"
                )
            time.sleep(POLL_S)
        try:
            work.wait()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection lost"
            raise FiacliError(
                f"rank {self.rank}: {what}: another rank left the job ({first})"
            ) from None

    def check_same(self, digest: str, description: str) -> None:
        """Refuse, on every rank, a job whose ranks were given different inputs (no hang)."""
        digests = self.gather(digest, timeout=CHECK_TIMEOUT_S, what="checking the inputs")
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            ranks = ", ".join(map(str, odd))
            raise FiacliError(
                f"ranks disagree on the inputs: rank(s) {ranks} have a different {description} "
                "from rank 0; give every rank the same command line and files"
            )

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


# --------------------------------------------------------------------------------------------
# the model, shared by every scene of the run


class RunPredictor:
    """The model for a whole run: each expression encoded once, chips counted for progress."""

    def __init__(self, predictor: Any, on_chips: Callable[[int], None] | None = None) -> None:
        self.inner = predictor
        self.cache: dict[tuple[str, bool], Any] = {}
        self.chips = 0
        self.on_chips = on_chips

    @property
    def image_size(self) -> int:
        return int(self.inner.image_size)

    def encode(self, expression: str, *, drop_position: bool = False) -> Any:
        key = (expression, bool(drop_position))
        if key not in self.cache:
            self.cache[key] = self.inner.encode(expression, drop_position=drop_position)
        return self.cache[key]

    def predict(self, chips: np.ndarray, encoded: Any) -> np.ndarray:
        out = self.inner.predict(chips, encoded)
        self.chips += len(chips)
        if self.on_chips is not None:
            self.on_chips(self.chips)
        return out

    def __getattr__(self, name: str) -> Any:  # device, model … of the real predictor
        return getattr(self.inner, name)


# --------------------------------------------------------------------------------------------
# the plan


def grid_offsets(length: int, chip: int, overlap: int) -> np.ndarray:
    from fiacli.geo.tiling import axis_offsets

    return axis_offsets(length, chip, overlap)


@dataclass(frozen=True)
class Band:
    """One part of a split scene: the chip rows it owns and the pixel rows it reads."""

    index: int
    count: int
    chip_rows: tuple[int, int]  # owned chip rows a..b, inclusive, of the global grid
    own: tuple[int, int]  # pixel rows [y0, y1) whose final values this band gives
    read: tuple[int, int]  # pixel rows [r0, r1) of its VRT window (own rows plus context)

    @property
    def top_seam(self) -> bool:
        return self.index > 0

    @property
    def bottom_seam(self) -> bool:
        return self.index < self.count - 1


def split_bands(height: int, chip: int, overlap: int, parts: int, context: int = 0) -> list[Band]:
    """Cut a scene into ``parts`` bands of whole chip rows whose chips are on the global grid.

    ``context``: extra rows around the own rows that must be exact too (``2 * --open``).
    """
    ys = grid_offsets(height, chip, overlap)
    n = len(ys)
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    bands = []
    for k in range(parts):
        a, b = bounds[k], bounds[k + 1] - 1
        y0 = 0 if a == 0 else int(ys[a])
        y1 = height if b == n - 1 else int(ys[b + 1])
        lo, hi = max(0, y0 - context), min(height, y1 + context)
        first = int(np.searchsorted(ys + min(chip, height), lo, side="right"))
        last = int(np.searchsorted(ys, hi, side="left")) - 1
        r0 = int(ys[first])
        r1 = height if last == n - 1 else int(ys[last]) + chip
        local = grid_offsets(r1 - r0, chip, overlap)
        if not np.array_equal(local, ys[first : last + 1] - r0):  # the module's promise
            raise AssertionError(f"band {k}: chips {local} off the global grid")
        bands.append(Band(k, parts, (a, b), (y0, y1), (r0, r1)))
    return bands


@dataclass
class Unit:
    """A piece of work for one rank: a whole scene, or one band of a split scene."""

    job: int  # index of the scene in the run
    rank: int
    cost: int  # pixels it reads
    band: Band | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job": self.job, "rank": self.rank, "cost": self.cost}
        if self.band is not None:
            out["band"] = self.band.index
        return out


def plan_units(
    sizes: Sequence[tuple[int, int, int]],
    world: int,
    chip: int,
    overlap: int,
    *,
    split: Callable[[int, int, int], bool],
    context: int = 0,
    parts: int | None = None,
) -> list[Unit]:
    """Spread scenes ``(job, height, width)`` over ``world`` ranks, balanced by pixel count.

    Scenes ``split`` says yes to are cut into ``parts`` bands (default: one per rank), given to
    the least-loaded ranks first; the whole scenes then go, largest first, to the least-loaded
    rank (the LPT rule: within 4/3 of the best balance).
    """
    load = [0] * world
    units: list[Unit] = []
    whole = []
    for job, height, width in sizes:
        n_parts = parts or world
        if n_parts > 1 and split(job, height, width):
            bands = split_bands(height, chip, overlap, n_parts, context)
            if len(bands) > 1:
                for band in bands:
                    rank = min(range(world), key=lambda r: (load[r], r))
                    cost = (band.read[1] - band.read[0]) * width
                    load[rank] += cost
                    units.append(Unit(job, rank, cost, band))
                continue
        whole.append((height * width, job))
    for cost, job in sorted(whole, key=lambda t: (-t[0], t[1])):
        rank = min(range(world), key=lambda r: (load[r], r))
        load[rank] += cost
        units.append(Unit(job, rank, cost))
    return units


def chips_of(height: int, width: int, chip: int, overlap: int) -> int:
    return len(grid_offsets(height, chip, overlap)) * len(grid_offsets(width, chip, overlap))


# --------------------------------------------------------------------------------------------
# progress of the whole job, shown by rank 0


class JobProgress:
    """Ranks write their chip counts to small files; rank 0 shows the sum as one bar."""

    def __init__(self, folder: Path, cluster: Cluster, total: int, *, show: bool) -> None:
        self.folder, self.cluster, self.total = folder, cluster, total
        self.show = show and cluster.is_main
        self.base = 0  # chips of the units this rank finished
        self.current = 0
        self.last_write = 0.0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _path(self, rank: int) -> Path:
        return self.folder / f"progress-rank{rank}.json"

    def chips(self, n: int) -> None:
        """This rank's chips done in the current unit (throttled file writes)."""
        self.current = n
        now = time.monotonic()
        if self.cluster.world > 1 and now - self.last_write > 0.5:
            self._write()
            self.last_write = now

    def unit_done(self, chips: int) -> None:
        self.base += chips
        self.current = 0
        if self.cluster.world > 1:
            self._write()

    def _write(self) -> None:
        with contextlib.suppress(OSError):
            tmp = self._path(self.cluster.rank).with_suffix(".tmp")
            tmp.write_text(json.dumps({"chips": self.base + self.current}))
            os.replace(tmp, self._path(self.cluster.rank))

    def _done(self) -> int:
        total = self.base + self.current
        for rank in range(1, self.cluster.world):
            with contextlib.suppress(OSError, ValueError):
                total += int(json.loads(self._path(rank).read_text())["chips"])
        return total

    def __enter__(self) -> JobProgress:
        if self.show and self.cluster.world > 1:
            self.thread = threading.Thread(
                target=self._run, name="fiacli-job-progress", daemon=True
            )
            self.thread.start()
        return self

    def _run(self) -> None:
        from fiacli.core.console import progress

        bar = progress()
        with bar:
            task = bar.add_task(f"segmenting on {self.cluster.world} ranks", total=self.total)
            while not self.stop.wait(0.5):
                bar.update(task, completed=min(self._done(), self.total))
            bar.update(task, completed=min(self._done(), self.total))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None and self.thread.is_alive():  # a signal may stop its start
            self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# one band of a split scene


def split_supported(options: Any, dtype: str) -> str | None:
    """Why a scene cannot be split with ``options`` (None: it can). ``dtype``: the scene's
    (non-uint8 scenes and ``--resolution`` are split too, through :func:`materialize`)."""
    from dataclasses import fields

    for f in fields(options):
        if f.name not in SPLIT_SAFE and getattr(options, f.name) != f.default:
            return f"--{f.name.replace('_', '-')} is not supported on split scenes"
    return None


def _dtype(scene: str, options: Any) -> str:
    """The type of the scene's pixels the model sees (uint8 ones are not stretched)."""
    from fiacli.geo.raster import open_scene

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = open_scene(scene, bands=options.bands, stretch=False,
                           allow_ungeoreferenced=options.allow_ungeoreferenced)  # fmt: skip
    with probe:
        return str(probe.src.dtypes[probe.indexes[0] - 1])


def materialize(scene: str, options: Any, r0: int, r1: int, path: Path) -> Path:
    """Rows ``[r0, r1)`` of the scene exactly as the model sees them in one process (bands
    chosen, resampled for ``--resolution``, stretched with the whole scene's statistics) as a
    3-band uint8 GeoTIFF with their validity as its mask: a part that reads it gets the same
    chips as the whole scene's run."""
    import rasterio
    from rasterio.windows import Window

    from fiacli.geo.raster import open_scene

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = open_scene(scene, bands=options.bands, resolution=options.resolution,
                            allow_ungeoreferenced=options.allow_ungeoreferenced)  # fmt: skip
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with opened as sc, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp, "w", driver="GTiff", width=sc.width, height=r1 - r0, count=3,
                           dtype="uint8", photometric="RGB", tiled=True, blockxsize=512,
                           blockysize=512, BIGTIFF="IF_SAFER") as ds:  # fmt: skip
            for a in range(r0, r1, READ_ROWS):
                b = min(a + READ_ROWS, r1)
                rgb, valid = sc.read(Window(0, a, sc.width, b - a))
                window = Window(0, a - r0, sc.width, b - a)
                ds.write(rgb, window=window)
                ds.write_mask(valid.astype(np.uint8) * 255, window=window)
    os.replace(tmp, path)
    return path


def _runs(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end columns of the runs of foreground (== 1) in one mask row."""
    fg = np.concatenate([[False], row == 1, [False]])
    edges = np.flatnonzero(fg[1:] != fg[:-1])
    return edges[0::2], edges[1::2]


def _seam_runs(pieces: np.ndarray, row: np.ndarray, y: int) -> list[tuple[int, int, int]]:
    """``(x0, x1, piece)`` for every run of row ``y``: which seam piece each run belongs to."""
    import shapely

    starts, ends = _runs(row)
    if len(starts) == 0:
        return []
    tree = shapely.STRtree(pieces)
    points = shapely.points(starts + 0.5, np.full(len(starts), y + 0.5))
    point_idx, piece_idx = tree.query(points, predicate="within")
    owner = np.full(len(starts), -1, np.int64)
    owner[point_idx] = piece_idx
    if (owner < 0).any():  # internal: a run of foreground belongs to some polygon
        raise AssertionError(f"row {y}: {int((owner < 0).sum())} run(s) without a polygon")
    return [(int(a), int(b), int(p)) for a, b, p in zip(starts, ends, owner, strict=True)]


def run_band(
    scene: str,
    texts: list[str],
    options: Any,
    band: Band,
    *,
    height: int,
    width: int,
    chip: int,
    overlap: int,
    folder: Path,
    predictor: Any,
    model_info: dict[str, Any] | None,
    vectors: bool,
    probabilities: bool,
    coarse: list[Any] | None = None,
    reuse_only: bool = False,
) -> dict[str, Any]:
    """Segment one band and vectorise its own rows; returns its record (also in part-K.json).
    ``coarse``: in scene scope, the whole scene's coarse pass (``pipeline.scene_regions``),
    which cuts every band the same way. ``reuse_only``: the caller skipped that pass because
    every part of the scene was reusable, so this one must be."""
    from dataclasses import replace

    import rasterio
    import shapely

    from fiacli.app.pipeline import segment_raster
    from fiacli.app.segment_options import SegmentOptions
    from fiacli.app.vrt import window_xml, write_vrt
    from fiacli.geo.vectorize import StreamingVectorizer, regions_to_frame

    t_start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    k = band.index
    stem = folder / f"part-{k:03d}"
    key = part_key(scene, texts, options, band, chip, overlap, model_info, vectors, probabilities)
    old = reusable_part(folder, band, key)
    if old is not None:
        return old
    if reuse_only:
        raise FiacliError(
            f"part {k} of {scene} was removed or changed after this run "
            "found it reusable; run the job again"
        )
    r0, r1 = band.read
    mask_path = Path(f"{stem}.mask.tif")
    prob_path = Path(f"{stem}.prob.tif") if (vectors or probabilities) else None
    changes: dict[str, Any] = {}
    if options.resolution is not None or _dtype(scene, options) != "uint8":
        vrt = materialize(scene, options, r0, r1, Path(f"{stem}.rgb.tif"))
        changes = {"bands": None, "resolution": None, "allow_ungeoreferenced": True}
    else:  # the pixels as they are: a window of the file is enough
        vrt = write_vrt(stem.with_suffix(".vrt"), window_xml(scene, r0, r1 - r0))
    band_regions = None
    if coarse is None:  # chip scope, or a scene of one chip (where the scopes coincide)
        changes["scope"] = "chip"
    else:
        band_regions = [replace(region, row0=r0) for region in coarse]
    part_options = SegmentOptions.build(
        options, chip=chip, overlap=overlap, probabilities=prob_path, preview=None, cog=False,
        min_area=0.0, simplify=0.0, dst_crs=None, overwrite=True, manifest=False, **changes,
    )  # fmt: skip
    result = segment_raster(vrt, texts, [mask_path], part_options, predictor=predictor,
                            model_info=model_info, regions=band_regions)  # fmt: skip
    t_vec = time.perf_counter()
    y0, y1 = band.own
    n_bands = len(texts)
    foreground = np.zeros(n_bands, np.int64)
    valid_pixels = 0
    vecs = [StreamingVectorizer(width) for _ in texts] if vectors else []
    top_rows: list[np.ndarray] = []
    bottom_rows: list[np.ndarray] = []
    with rasterio.open(mask_path) as mds, contextlib.ExitStack() as stack:
        pds = stack.enter_context(rasterio.open(prob_path)) if prob_path and vectors else None
        for a in range(y0, y1, READ_ROWS):
            b = min(a + READ_ROWS, y1)
            window = ((a - r0, b - r0), (0, width))
            mask = mds.read(window=window)
            prob = pds.read(window=window) if pds is not None else None
            foreground += (mask == 1).sum(axis=(1, 2))
            valid_pixels += int((mask[0] != 255).sum())
            for e, vec in enumerate(vecs):
                vec.add_rows(mask[e], None if prob is None else prob[e])
            if a == y0:
                top_rows = [m[0].copy() for m in mask]
            if b == y1:
                bottom_rows = [m[-1].copy() for m in mask]
    files: dict[str, str | None] = {"mask": str(mask_path),
                                    "prob": str(prob_path) if prob_path else None}  # fmt: skip
    n_closed = [0] * n_bands
    if vectors:
        import geopandas as gpd
        import pandas as pd

        from fiacli.geo.raster import open_scene

        with warnings.catch_warnings():  # the scene's own georeferencing (the VRT's is shifted)
            warnings.simplefilter("ignore")
            probe = open_scene(scene, stretch=False, resolution=options.resolution,
                               allow_ungeoreferenced=options.allow_ungeoreferenced)  # fmt: skip
        with probe:
            transform, crs = probe.transform, probe.crs
        frames, seam_rows = [], []
        for e, vec in enumerate(vecs):
            regions = vec.finish()
            geoms = np.asarray(regions.geometries, dtype=object)
            if len(geoms):
                geoms = shapely.transform(geoms, lambda xy, dy=y0: xy + np.array([0.0, dy]))
            bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
            seam = np.zeros(len(geoms), bool)
            if band.top_seam:
                seam |= bounds[:, 1] == y0
            if band.bottom_seam:
                seam |= bounds[:, 3] == y1
            pixels = np.asarray(regions.pixels, np.int64)
            probs = np.asarray(regions.prob_sums, np.float64)
            closed = regions.__class__(list(geoms[~seam]), pixels[~seam].tolist(),
                                       probs[~seam].tolist())  # fmt: skip
            frames.append(regions_to_frame(
                closed, expression=texts[e], transform=transform, crs=crs,
                min_area=options.min_area, simplify=options.simplify,
            ))  # fmt: skip
            n_closed[e] = len(frames[-1])
            pieces = geoms[seam]
            offset = len(seam_rows)
            for g, p, s in zip(pieces, pixels[seam], probs[seam], strict=True):
                seam_rows.append({"band": e, "wkb": shapely.to_wkb(g).hex(), "pixels": int(p),
                                  "prob": float(s), "top": [], "bottom": []})  # fmt: skip
            if len(pieces):
                if band.top_seam:
                    for x0, x1, p in _seam_runs(pieces, top_rows[e], y0):
                        seam_rows[offset + p]["top"].append([x0, x1])
                if band.bottom_seam:
                    for x0, x1, p in _seam_runs(pieces, bottom_rows[e], y1 - 1):
                        seam_rows[offset + p]["bottom"].append([x0, x1])
        frame = pd.concat(frames, ignore_index=True)
        polygons_path = Path(f"{stem}.polygons.parquet")
        gpd.GeoDataFrame(frame, geometry="geometry").to_parquet(polygons_path)
        seams_path = Path(f"{stem}.seams.json")
        seams_path.write_text(json.dumps(seam_rows))
        files.update(polygons=str(polygons_path), seams=str(seams_path))
    with contextlib.suppress(FileNotFoundError):
        vrt.unlink()  # the window VRT or the materialised rows
    record = {
        "key": key,
        "band": band.index,
        "own": list(band.own),
        "read": list(band.read),
        "files": files,
        "chips": result.chips,
        "foreground": foreground.tolist(),
        "valid_pixels": valid_pixels,
        "closed_polygons": n_closed,
        "timings_s": {**result.timings_s, "own_rows": round(time.perf_counter() - t_vec, 4)},
        "seconds": round(time.perf_counter() - t_start, 4),
    }
    record_path = stem.with_suffix(".json")
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, record_path)
    return record


def part_key(scene: str, texts: list[str], options: Any, band: Band, chip: int, overlap: int,
             model_info: dict[str, Any] | None, vectors: bool,
             probabilities: bool) -> str:  # fmt: skip
    """What a band's part was made from: a part whose record has this key can be reused."""
    model = {k: v for k, v in (model_info or {}).items() if k != "device"}
    payload = [scene, texts, options.record(), band.read, band.own, chip, overlap, model,
               vectors, probabilities]  # fmt: skip
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def reusable_part(folder: Path, band: Band, key: str) -> dict[str, Any] | None:
    """The record of ``band``'s part in ``folder`` when a run (killed before it could clean
    up) made it with the same ``key`` and its files are all there; else None."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        old = json.loads((folder / f"part-{band.index:03d}.json").read_text())
        if old["key"] == key and all(Path(p).exists() for p in old["files"].values() if p):
            old["reused"] = True
            return old
    return None


# --------------------------------------------------------------------------------------------
# assembly, on rank 0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _touching(
    lower: list[tuple[int, int, int]], upper: list[tuple[int, int, int]]
) -> Iterator[tuple[int, int]]:
    """Pairs of pieces whose runs overlap in x (4-adjacent across the seam); runs sorted."""
    i = j = 0
    while i < len(lower) and j < len(upper):
        a0, a1, pa = lower[i]
        b0, b1, pb = upper[j]
        if a0 < b1 and b0 < a1:
            yield pa, pb
        if a1 <= b1:
            i += 1
        else:
            j += 1


def merge_seams(parts: Sequence[dict[str, Any]], n_bands: int) -> list[Any]:
    """Union the seam pieces of consecutive parts that touch across the seam between them;
    returns, per expression, the merged :class:`~fiacli.geo.vectorize.Regions`."""
    import shapely

    from fiacli.geo.vectorize import Regions, join_pieces

    pieces: list[dict[str, Any]] = []
    per_part: list[list[int]] = []
    for part in parts:
        rows = json.loads(Path(part["files"]["seams"]).read_text())
        per_part.append(list(range(len(pieces), len(pieces) + len(rows))))
        pieces.extend(rows)
    uf = _UnionFind(len(pieces))
    for k in range(len(parts) - 1):
        for e in range(n_bands):
            lower = sorted((x0, x1, i) for i in per_part[k] if pieces[i]["band"] == e
                           for x0, x1 in pieces[i]["bottom"])  # fmt: skip
            upper = sorted((x0, x1, i) for i in per_part[k + 1] if pieces[i]["band"] == e
                           for x0, x1 in pieces[i]["top"])  # fmt: skip
            for a, b in _touching(lower, upper):
                uf.union(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(uf.find(i), []).append(i)
    out = [Regions() for _ in range(n_bands)]
    for members in groups.values():  # in order of their first piece: top to bottom
        geoms = [shapely.from_wkb(bytes.fromhex(pieces[i]["wkb"])) for i in members]
        geom = geoms[0] if len(geoms) == 1 else join_pieces(geoms)
        regions = out[pieces[members[0]]["band"]]
        regions.geometries.append(geom)
        regions.pixels.append(sum(pieces[i]["pixels"] for i in members))
        regions.prob_sums.append(float(sum(pieces[i]["prob"] for i in members)))
    return out


def _copy_rows(parts: Sequence[dict[str, Any]], kind: str, writer: Any) -> None:
    """Own rows of every part, top to bottom, into one RasterRowWriter."""
    import rasterio

    for part in parts:
        (y0, y1), r0 = part["own"], part["read"][0]
        with rasterio.open(part["files"][kind]) as ds:
            for a in range(y0, y1, READ_ROWS):
                b = min(a + READ_ROWS, y1)
                window = ((a - r0, b - r0), (0, ds.width))
                rows = ds.read(window=window)
                valid = None
                if kind == "prob":
                    valid = ds.read_masks(1, window=window) > 0
                writer.write(rows, valid)


def assemble(
    scene: str,
    texts: list[str],
    options: Any,
    outputs: Any,
    parts: Sequence[dict[str, Any]],
    *,
    chip: int,
    overlap: int,
    model_info: dict[str, Any] | None,
    world: int,
) -> dict[str, Any]:
    """Rank 0: the outputs and manifest of a split scene from its parts (in band order)."""
    import rasterio
    from rasterio.enums import Resampling

    from fiacli import __version__
    from fiacli.app.pipeline import SegmentResult
    from fiacli.core.io import atomic_output, scratch_folder
    from fiacli.geo.raster import RasterRowWriter, open_scene, translate_to_cog
    from fiacli.geo.vectorize import regions_to_frame, write_vectors

    t0 = time.perf_counter()
    parts = sorted(parts, key=lambda p: p["band"])
    timings: dict[str, float] = {}
    scene_args = {"bands": options.bands, "resolution": options.resolution,
                  "allow_ungeoreferenced": options.allow_ungeoreferenced}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = open_scene(scene, **scene_args)
    with opened as sc, contextlib.ExitStack() as stack:
        finals = outputs.finals()
        tmp = {
            p: stack.enter_context(atomic_output(p, overwrite=options.overwrite)) for p in finals
        }
        scratch = None
        if options.cog:
            folder = scratch_folder(finals[0].parent, "cog")
            scratch = Path(stack.enter_context(folder))
        tags = {"fiacli_version": __version__, "expressions": json.dumps(texts)}
        for kind, path in (("mask", outputs.mask), ("prob", outputs.probabilities)):
            if path is None:
                continue
            target = scratch / f"{kind}.tif" if scratch else tmp[path]
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                w = RasterRowWriter(
                    target, width=sc.width, height=sc.height, count=len(texts),
                    transform=sc.transform, crs=sc.crs, descriptions=texts, tags=tags,
                    nodata=255 if kind == "mask" else None, internal_mask=kind != "mask",
                )  # fmt: skip
                stack.callback(w.abort)
                _copy_rows(parts, kind, w)
                resampling = Resampling.nearest if kind == "mask" else Resampling.average
                w.close(overview_resampling=None if scratch else resampling)
            if scratch:
                translate_to_cog(w.path, tmp[path], mask=kind == "mask")
        timings["rasters"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        n_polygons: list[int | None] = [None] * len(texts)
        frames_per_band = None
        if outputs.vectors or outputs.preview is not None:
            import geopandas as gpd
            import pandas as pd

            merged = merge_seams(parts, len(texts))
            closed = [gpd.read_parquet(p["files"]["polygons"]) for p in parts]
            frames_per_band = []
            for e, text in enumerate(texts):
                seam_frame = regions_to_frame(
                    merged[e], expression=text, transform=sc.transform, crs=sc.crs,
                    min_area=options.min_area, simplify=options.simplify,
                )  # fmt: skip
                pieces = [f[f["expression"] == text] for f in closed] + [seam_frame]
                frame = pd.concat(pieces, ignore_index=True)
                frames_per_band.append(
                    gpd.GeoDataFrame(frame, geometry="geometry", crs=seam_frame.crs)
                )
                n_polygons[e] = len(frame)
            every = gpd.GeoDataFrame(pd.concat(frames_per_band, ignore_index=True),
                                     geometry="geometry", crs=frames_per_band[0].crs)  # fmt: skip
            for path in outputs.vectors:
                write_vectors(every, tmp[path], dst_crs=options.dst_crs)
        timings["vectors"] = time.perf_counter() - t1
        if outputs.preview is not None and frames_per_band is not None:
            from fiacli.geo.preview import write_scene_preview

            write_scene_preview(tmp[outputs.preview], sc, frames_per_band, texts)
        timings["assembly"] = time.perf_counter() - t0
        chips = {"total": chips_of(sc.height, sc.width, chip, overlap)}
        for name in ("predicted", "skipped_nodata", "skipped_outside"):
            chips[name] = int(sum(p["chips"].get(name, 0) for p in parts))
        chips["halo"] = int(sum(p["chips"]["total"] for p in parts)) - chips["total"]
        foreground = np.sum([p["foreground"] for p in parts], axis=0)
        record = options.record()
        record.update(chip=chip, overlap=overlap, effective_scope=options.scope)
        result = SegmentResult(
            scene={**sc.describe(), "valid_pixels": int(sum(p["valid_pixels"] for p in parts))},
            expressions=texts,
            outputs=outputs.as_dict(),
            chips=chips,
            per_expression=[
                {"expression": t, "foreground_pixels": int(f), "polygons": n}
                for t, f, n in zip(texts, foreground, n_polygons, strict=True)
            ],
            timings_s={
                "parts_max": round(max(p["seconds"] for p in parts), 4),
                **{k: round(v, 4) for k, v in timings.items()},
            },
            options=record,
            warnings=list(sc.warnings),
        )
        payload = {
            "fiacli_version": __version__,
            "command": "segment",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model_info,
            **result.to_dict(),
            "split": {
                "parts": len(parts),
                "ranks": world,
                "own_rows": [p["own"] for p in parts],
            },  # fmt: skip
        }
        if outputs.manifest is not None:
            with atomic_output(outputs.manifest, overwrite=True) as mtmp:
                mtmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return payload


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def describe_error(exc: BaseException) -> str:
    """One line for a summary row."""
    if isinstance(exc, FiacliError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "Band",
    "Cluster",
    "JobProgress",
    "RunPredictor",
    "Unit",
    "assemble",
    "merge_seams",
    "part_key",
    "plan_units",
    "reusable_part",
    "run_band",
    "split_bands",
    "split_supported",
]

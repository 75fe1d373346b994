"""The staged ``segment`` pipeline: the same outputs, bit for bit, whatever the threads and batch
size; the device path (run here on CPU tensors); CUDA out of memory; faults stop every stage.

The reference is the pre-change serial arithmetic, computed here independently of the pipeline:
every chip read with ``Scene.read``, the oracle, :class:`RowStitcher` (NaN for nodata) and the
old thresholding and quantisation. The pipeline's own ``threads=1`` run is a second reference.
"""

from __future__ import annotations

import errno
import json
import threading
import warnings

import numpy as np
import pytest
import rasterio
import torch
from _oracle import Oracle, random_rgb, read, write_tif

from fiacli.app import pipeline
from fiacli.app.pipeline import segment_raster
from fiacli.core.errors import FiacliError
from fiacli.geo.raster import FILL_RGB, open_scene
from fiacli.geo.tiling import ChipGrid, ChipReader, ReadPlan, RowStitcher

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def fiacli_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fiacli-")]


def reference(path, expressions, *, chip, overlap, blend="cosine", threshold=0.5, radius=0):
    """Mask, probabilities and validity as the serial pipeline computed them before #9."""
    oracle = Oracle(image_size=chip, radius=radius)
    with open_scene(path) as scene:
        grid = ChipGrid(scene.height, scene.width, chip, overlap)
        st = RowStitcher(grid, len(expressions), blend)
        encoded = [oracle.encode(e) for e in expressions]
        out = np.full((len(expressions), grid.height, grid.width), np.nan, np.float32)
        for c in grid:
            rgb, valid = scene.read(rasterio.windows.Window(c.x, c.y, c.width, c.height))
            probs = None
            if valid.any():
                pixels = np.empty((1, 3, chip, chip), np.uint8)
                pixels[:] = np.asarray(FILL_RGB, np.uint8)[None, :, None, None]
                pixels[0, :, : c.height, : c.width] = rgb
                probs = np.zeros((len(expressions), c.height, c.width), np.float32)
                for e, enc in enumerate(encoded):
                    p = oracle.predict(pixels, enc)[0, : c.height, : c.width]
                    probs[e] = np.clip(np.nan_to_num(p), 0, 1)
            ready = st.add(c, probs, valid.copy())
            if ready is not None:
                y0, rows = ready
                out[:, y0 : y0 + rows.shape[1]] = rows
    valid = ~np.isnan(out[0])
    mask = np.greater(out, threshold).view(np.uint8)
    mask[:, ~valid] = 255
    np.nan_to_num(out, copy=False, nan=0.0)
    prob = np.rint(out * 255).astype(np.uint8)
    return mask, prob, valid


def outputs(tmp_path, name, scene, expressions, **kw):
    folder = tmp_path / name
    folder.mkdir()
    result = segment_raster(scene, expressions, [folder / "m.tif", folder / "v.gpkg"],
                            probabilities=folder / "p.tif", **kw)  # fmt: skip
    with rasterio.open(folder / "p.tif") as ds:
        prob, pmask = ds.read(), ds.read_masks(1)
    import pyogrio

    frame = pyogrio.read_dataframe(folder / "v.gpkg")
    features = [(e, g.wkb, int(p), float(m)) for e, g, p, m in zip(
        frame.expression, frame.geometry, frame.pixels, frame.mean_prob, strict=True)]  # fmt: skip
    return {"mask": read(folder / "m.tif"), "prob": prob, "prob_mask": pmask,
            "features": features, "result": result}  # fmt: skip


SCENES = {
    # name: (height, width, tiled, nodata stripe)
    "tiled": (300, 530, True, False),
    "striped-nodata": (260, 400, False, True),
    "tiled-nodata": (520, 300, True, True),
}


def _scene(tmp_path, name):
    h, w, tiled, holes = SCENES[name]
    rgb = random_rgb(h, w, seed=h * w % 97)
    if holes:
        rgb[:, 40:60, :] = 0
        rgb[:, :, 100:130] = 0
    return write_tif(tmp_path / f"{name}.tif", rgb, tiled=tiled, nodata=0 if holes else None)


@pytest.mark.parametrize("name", list(SCENES))
def test_outputs_are_the_serial_reference_whatever_threads_and_batch(tmp_path, name, monkeypatch):
    from fiacli.geo import vectorize

    monkeypatch.setattr(vectorize, "SPOOL_VERTICES", 300)  # several spool batches, 2 bands
    scene = _scene(tmp_path, name)
    texts = ["red", "green"]
    mask, prob, valid = reference(scene, texts, chip=64, overlap=20, radius=2)
    runs = {}
    for threads, batch in [(1, 4), (2, 1), (2, 3), (4, 8), (3, 2)]:
        runs[threads, batch] = outputs(tmp_path, f"t{threads}b{batch}", scene, texts,
                                       predictor=Oracle(image_size=64, radius=2), chip=64,
                                       overlap=20, threads=threads, batch_size=batch)  # fmt: skip
        assert fiacli_threads() == []
    first = runs[1, 4]
    assert np.array_equal(first["mask"], mask) and np.array_equal(first["prob"], prob)
    assert np.array_equal(first["prob_mask"] > 0, valid)
    assert len(first["features"]) > 20 and {f[0] for f in first["features"]} == set(texts)
    for key, run in runs.items():
        assert np.array_equal(run["mask"], mask), key
        assert np.array_equal(run["prob"], prob), key
        assert np.array_equal(run["prob_mask"], first["prob_mask"]), key
        assert run["features"] == first["features"], key  # same polygons, same order
        assert run["result"].per_expression == first["result"].per_expression
        assert run["result"].chips == first["result"].chips


@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
def test_blends_scene_scope_and_opening_match_the_serial_run(tmp_path, blend):
    rgb = random_rgb(210, 330, seed=5)
    rgb[:, :30, :50] = 0
    scene = write_tif(tmp_path / "s.tif", rgb, tiled=True, nodata=0)
    texts = ["red on the left", "blue"]
    common = dict(chip=48, overlap=16, blend=blend, open_px=1, scope="scene", threshold=0.3)
    one = outputs(tmp_path, "one", scene, texts, predictor=Oracle(image_size=48, radius=1),
                  threads=1, **common)  # fmt: skip
    many = outputs(tmp_path, "many", scene, texts, predictor=Oracle(image_size=48, radius=1),
                   threads=3, batch_size=5, **common)  # fmt: skip
    for k in ("mask", "prob", "prob_mask", "features"):
        assert np.array_equal(np.asarray(one[k], object), np.asarray(many[k], object)), k


class TorchOracle(Oracle):
    """The oracle as a device predictor: chips arrive as tensors, maps stay tensors."""

    device = torch.device("cpu")

    def predict_tensor(self, chips, encoded):
        return torch.from_numpy(self.predict(chips.numpy(), encoded))


@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
@pytest.mark.parametrize("scope", ["chip", "scene"])
def test_blending_on_the_device_is_the_cpu_path_bit_for_bit(tmp_path, monkeypatch, blend, scope):
    rgb = random_rgb(230, 310, seed=9)
    rgb[:, 50:70, 20:90] = 0
    scene = write_tif(tmp_path / "s.tif", rgb, tiled=True, nodata=0)
    texts = ["red on the right", "green"]
    common = dict(chip=64, overlap=24, blend=blend, scope=scope, threshold=0.3, batch_size=3)
    cpu = outputs(tmp_path, "cpu", scene, texts, predictor=TorchOracle(image_size=64, radius=2),
                  threads=2, **common)  # fmt: skip
    assert cpu["result"].stages["blend_on_device"] is False
    monkeypatch.setattr(pipeline, "DEVICE_BLEND", True)
    for threads in (1, 2):
        dev = outputs(tmp_path, f"dev{threads}", scene, texts, threads=threads,
                      predictor=TorchOracle(image_size=64, radius=2), **common)  # fmt: skip
        assert dev["result"].stages["blend_on_device"] is True
        for k in ("mask", "prob", "prob_mask"):
            assert np.array_equal(cpu[k], dev[k]), k
        assert cpu["features"] == dev["features"]
        assert cpu["result"].chips == dev["result"].chips


def test_fit_batch_size_from_two_peaks():
    from fiacli.app.device_stream import fit_batch_size

    gib = 2**30
    # 2 GiB of weights, 1 GiB per chip, 40 GiB device: (0.8 * 40 - 3) / 1 + 1 = 30 -> 28
    assert fit_batch_size(3 * gib, 4 * gib, 40 * gib) == 28
    assert fit_batch_size(3 * gib, 4 * gib, 4 * gib) == 1  # never 0
    assert fit_batch_size(gib, gib + 1000, 100 * gib) == 64  # capped
    assert fit_batch_size(3 * gib, 4 * gib, 11 * gib) == 6  # small: not rounded to 4


class AutoBatchOracle(Oracle):
    def auto_batch_size(self, chip, encoded):
        assert chip == 32 and encoded.channel == 0
        return 7


def test_batch_size_auto_asks_the_predictor_and_defaults_to_four(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(100, 120))
    r = segment_raster(scene, "red", tmp_path / "a.tif", predictor=AutoBatchOracle(), chip=32,
                       overlap=8)  # fmt: skip
    assert r.stages["batch_size"] == 7 and r.options["batch_size"] == "auto"
    oracle = Oracle()
    r = segment_raster(scene, "red", tmp_path / "b.tif", predictor=oracle, chip=32, overlap=8)
    assert r.stages["batch_size"] == 4 and max(b[0] for b in oracle.batches) == 4


class OomOracle(Oracle):
    """Raises CUDA's out-of-memory error for batches larger than ``fits`` chips."""

    fits: int = 2

    def predict(self, chips, encoded):
        if len(chips) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().predict(chips, encoded)


def test_cuda_out_of_memory_halves_the_batch_once_and_warns(tmp_path, capsys):
    scene = write_tif(tmp_path / "s.tif", random_rgb(150, 170))
    ref = segment_raster(scene, "red", tmp_path / "ref.tif", predictor=Oracle(), chip=32,
                         overlap=8, batch_size=2)  # fmt: skip
    oracle = OomOracle()
    r = segment_raster(scene, "red", tmp_path / "oom.tif", predictor=oracle, chip=32, overlap=8,
                       batch_size=4, threads=2)  # fmt: skip
    assert "CUDA out of memory at batch size 4" in capsys.readouterr().err
    assert r.stages["batch_size"] == 2 and max(b[0] for b in oracle.batches) == 2
    assert np.array_equal(read(tmp_path / "oom.tif"), read(tmp_path / "ref.tif"))
    assert r.chips == ref.chips


def test_cuda_out_of_memory_after_the_retry_stops_the_run_and_names_the_chips(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(150, 170))
    before = sorted(p.name for p in tmp_path.iterdir())
    oracle = OomOracle()
    oracle.fits = 1
    with pytest.raises(FiacliError, match=r"CUDA out of memory at batch size 2 \(chips 0,0 to"):
        segment_raster(scene, "red", [tmp_path / "m.tif", tmp_path / "v.gpkg"],
                       predictor=oracle, chip=32, overlap=8, batch_size=4, threads=2)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert fiacli_threads() == []


def _corrupt_one_tile(path, row, col):
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))


@pytest.mark.parametrize("threads", [1, 3])
def test_a_corrupt_tile_stops_every_stage_and_names_the_window(tmp_path, threads):
    scene = write_tif(tmp_path / "s.tif", random_rgb(700, 600), tiled=True, compress="lzw",
                      interleave="band")  # fmt: skip
    _corrupt_one_tile(scene, 2, 1)  # rows 512-699, columns 256-511
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        FiacliError, match=r"s.tif at rows 512-\d+, columns 0-599\b.*\(chips \d+,0 to"
    ):
        segment_raster(scene, "red", [tmp_path / "m.tif", tmp_path / "v.gpkg"],
                       probabilities=tmp_path / "p.tif", predictor=Oracle(), chip=64,
                       overlap=16, threads=threads)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert fiacli_threads() == []


@pytest.mark.parametrize("where", ["raster", "polygons"])
def test_a_full_disk_in_a_writer_thread_is_one_error_and_leaves_nothing(tmp_path, monkeypatch,
                                                                        where):  # fmt: skip
    from fiacli.geo import raster, vectorize

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "raster":
        monkeypatch.setattr(raster.RasterRowWriter, "_flush", full)
    else:
        monkeypatch.setattr(vectorize, "SPOOL_VERTICES", 1)
        monkeypatch.setattr(vectorize.PolygonWriter, "_spool", full)
    # tall enough for a window of 2,279 rows (1 Mpx) to be vectorised before the end
    scene = write_tif(tmp_path / "s.tif", random_rgb(2400, 460), tiled=True)
    with pytest.raises(FiacliError, match="disk full"):
        segment_raster(scene, "red", [tmp_path / "m.tif", tmp_path / "v.gpkg"],
                       predictor=Oracle(), chip=64, overlap=8, threads=3)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    assert fiacli_threads() == []


def test_a_failing_polygon_worker_stops_the_run(tmp_path, monkeypatch):
    from fiacli.geo import vectorize

    def broken(*args):
        raise RuntimeError("polygoniser broke")

    monkeypatch.setattr(vectorize, "_window_shapes", broken)
    scene = write_tif(tmp_path / "s.tif", random_rgb(300, 300))
    with pytest.raises(RuntimeError, match="polygoniser broke"):
        segment_raster(scene, "red", tmp_path / "v.gpkg", predictor=Oracle(), chip=32,
                       overlap=8, threads=2)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    assert fiacli_threads() == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_in_the_model_stops_every_thread_and_leaves_nothing(tmp_path, exc):
    scene = write_tif(tmp_path / "s.tif", random_rgb(400, 400), tiled=True)
    with pytest.raises(exc):
        segment_raster(scene, "red", [tmp_path / "m.tif", tmp_path / "v.gpkg"],
                       probabilities=tmp_path / "p.tif", chip=32, overlap=8, threads=4,
                       predictor=Oracle(fail_after=5, fail_with=exc))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    assert fiacli_threads() == []


def test_the_manifest_keeps_its_timings_and_adds_stages(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(200, 220), tiled=True)
    r = segment_raster(scene, "red", [tmp_path / "m.tif", tmp_path / "m.gpkg"],
                       predictor=Oracle(), chip=32, overlap=8, threads=2)  # fmt: skip
    manifest = json.loads((tmp_path / "m.manifest.json").read_text())
    timings = manifest["timings_s"]
    for key in ("open", "encode", "read", "wait_for_read", "model", "stitch_and_write",
                "finalize_rasters", "vectorize", "total"):  # fmt: skip
        assert timings[key] >= 0, key
    stages = manifest["stages"]
    assert stages["threads"] == 2 and stages["batch_size"] == 4 and stages["wall_s"] > 0
    per = stages["stages"]
    assert {"read", "batch", "model", "write", "vectorize", "polygonize"} <= set(per)
    assert per["read"]["threads"] == 2 and per["model"]["items"] == r.chips["total"]
    for item in per.values():
        assert {"busy_s", "wait_input_s", "wait_output_s", "busy_share"} <= set(item)
    assert stages["bound_by"] in per


def test_block_windows_partition_the_scene_and_bound_memory():
    grid = ChipGrid(2000, 9000, 480, 96)
    plan = ReadPlan(grid, (512, 512))
    covered = np.zeros((2000, 9000), np.int8)
    for u in plan.units:
        assert u.y % 512 == 0 and u.x % 512 == 0  # whole blocks: each decoded once
        covered[u.y : u.y + u.height, u.x : u.x + u.width] += 1
    assert (covered == 1).all()
    from fiacli.geo.tiling import UNIT_COLUMNS

    groups = len({u.x for u in plan.units})  # windows across a row
    assert max(u.width for u in plan.units) <= UNIT_COLUMNS and plan.live <= 2 * groups + 1
    for k, chip in enumerate(grid):  # every chip lies in the windows it is cut from
        area = sum(
            max(0, min(chip.y + chip.height, plan.units[u].y + plan.units[u].height)
                - max(chip.y, plan.units[u].y))
            * max(0, min(chip.x + chip.width, plan.units[u].x + plan.units[u].width)
                  - max(chip.x, plan.units[u].x))
            for u in plan.chip_units[k]
        )  # fmt: skip
        assert area == chip.height * chip.width


def test_reader_threads_give_the_serial_batches(tmp_path):
    rgb = random_rgb(333, 700, seed=2)
    rgb[:, 100:140, 300:380] = 0
    scene = write_tif(tmp_path / "s.tif", rgb, tiled=True, nodata=0)
    with warnings.catch_warnings(), open_scene(scene) as sc:
        grid = ChipGrid(sc.height, sc.width, 64, 16)
        signature = None
        for threads in (0, 1, 4):
            with ChipReader(sc, grid, 5, threads=threads) as reader:
                batches = list(reader)
            sig = [(b.slot, b.pixels.tobytes(), [v.tobytes() for v in b.valid]) for b in batches]
            signature = signature or sig
            assert sig == signature, threads
            assert reader.plan.kind == "blocks"
    assert fiacli_threads() == []


@pytest.mark.slow
def test_fianet_tiny_is_the_same_with_threads_and_on_the_device_path(tmp_path, monkeypatch):
    from fiacli.app.predictor import RefSegPredictor
    from fiacli.models import create_model, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    torch.manual_seed(0)
    model = create_model("fianet-tiny", image_size=64)
    path = save_checkpoint(tmp_path / "tiny.safetensors", model,
                           {"parse": ParseSettings().to_dict()})  # fmt: skip
    predictor = RefSegPredictor.from_checkpoint(path, device="cpu")
    rgb = random_rgb(150, 210, seed=4)
    rgb[:, :20, :40] = 0
    scene = write_tif(tmp_path / "s.tif", rgb, nodata=0)
    texts = ["the white van on the left", "the road"]
    common = dict(chip=64, overlap=16, batch_size=2, threshold=0.5)
    one = outputs(tmp_path, "one", scene, texts, predictor=predictor, threads=1, **common)
    two = outputs(tmp_path, "two", scene, texts, predictor=predictor, threads=3, **common)
    monkeypatch.setattr(pipeline, "DEVICE_BLEND", True)
    dev = outputs(tmp_path, "dev", scene, texts, predictor=predictor, threads=2, **common)
    assert dev["result"].stages["blend_on_device"] is True
    for other in (two, dev):
        for k in ("mask", "prob", "prob_mask"):
            assert np.array_equal(one[k], other[k]), k
        assert one["features"] == other["features"]
    assert one["prob"].std() > 0


BLEND_GRIDS = [(150, 201, 64, 16), (97, 131, 32, 24), (40, 45, 16, 15), (30, 20, 64, 8),
               (65, 129, 64, 0), (200, 70, 48, 20), (1000, 900, 480, 96)]  # fmt: skip


def _blend_both(grid, blend, make, seed=0):
    """RowStitcher's and ``make(grid)``'s rows over random maps (2 bands, one sometimes
    zero, nodata), as float32 bit patterns."""
    rng = np.random.default_rng(seed)
    h, w = grid.height, grid.width
    nodata = rng.random((h, w)) < 0.05
    nodata[: h // 10] = True
    old, new = RowStitcher(grid, 2, blend), make(grid)
    a = np.full((2, h, w), np.nan, np.float32)
    b = np.full((2, h, w), np.nan, np.float32)
    valid_b = np.zeros((h, w), bool)
    for c in grid:
        valid = ~nodata[c.y : c.y + c.height, c.x : c.x + c.width]
        p = rng.random((2, grid.chip, grid.chip)).astype(np.float32)
        zero = rng.random() < 0.2
        if zero:
            p[1] = 0
        probs = None if not valid.any() else p[:, : c.height, : c.width].copy()
        ra = old.add(c, probs, valid.copy())
        bands = None if probs is None else [p[0], None if zero else p[1]]
        rb = new.add(c, None if bands is None else [_as(new, x) for x in bands], valid,
                     bool(valid.all()))  # fmt: skip
        if ra is not None:
            y0, rows = ra
            a[:, y0 : y0 + rows.shape[1]] = rows
            _, rows_b, v, all_valid = rb
            rows_b = rows_b if isinstance(rows_b, np.ndarray) else rows_b.numpy()
            b[:, y0 : y0 + rows.shape[1]] = rows_b
            valid_b[y0 : y0 + rows.shape[1]] = v
            assert not all_valid or v.all()
    assert np.array_equal(~np.isnan(a[0]), valid_b)
    return a[:, valid_b].view(np.uint32), b[:, valid_b].view(np.uint32)


def _as(blender, x):
    if x is None or not hasattr(blender, "device"):
        return x
    return torch.from_numpy(x)


@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
@pytest.mark.parametrize(("h", "w", "chip", "overlap"), BLEND_GRIDS)
def test_row_blender_is_row_stitcher_bit_for_bit(h, w, chip, overlap, blend):
    from fiacli.geo.tiling import RowBlender

    grid = ChipGrid(h, w, chip, overlap)
    a, b = _blend_both(grid, blend, lambda g: RowBlender(g, 2, blend))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
@pytest.mark.parametrize(("h", "w", "chip", "overlap"), BLEND_GRIDS[:4])
def test_the_torch_blender_is_row_stitcher_bit_for_bit(h, w, chip, overlap, blend):
    from fiacli.app.device_stream import TorchBlender

    grid = ChipGrid(h, w, chip, overlap)
    cpu = torch.device("cpu")
    a, b = _blend_both(grid, blend, lambda g: TorchBlender(g, 2, blend, cpu), seed=1)
    assert np.array_equal(a, b)


class CpuTorchOracle(Oracle):
    device = torch.device("cpu")


def test_a_model_on_the_cpu_runs_the_stages_in_turn_by_default(tmp_path):
    scene = write_tif(tmp_path / "s.tif", random_rgb(100, 100))
    r = segment_raster(scene, "red", tmp_path / "a.tif", predictor=CpuTorchOracle(), chip=32,
                       overlap=8)  # fmt: skip
    assert r.stages["threads"] == 1  # the model keeps the cores
    r = segment_raster(scene, "red", tmp_path / "b.tif", predictor=Oracle(), chip=32, overlap=8)
    assert r.stages["threads"] == pipeline.resolve_threads(None)
    r = segment_raster(scene, "red", tmp_path / "c.tif", predictor=CpuTorchOracle(), chip=32,
                       overlap=8, threads=3)  # fmt: skip
    assert r.stages["threads"] == 3

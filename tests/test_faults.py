"""Faults and hostile input across every command (#13): one table, one check for every case.

Each case runs one command in a copy of a small world (rasters built on the fly, a synthetic
dataset, checkpoints, a run folder) and asserts what fiacli promises whatever goes wrong:

* the exit code (2 usage, 1 input/environment, 128+N signal N, 0 for warnings);
* exactly one stderr line starting with ``error:`` (or ``warning:``), never a traceback and
  never a GDAL line before it (``strict``: that line is all of stderr);
* no file left under a final or temporary name, and every input and pre-existing file
  unchanged (by hash) - or, for cases that succeed, exactly the expected new files.

Segment cases use the tests' oracle model in place of FIANet (the command line, options, scene
reading and writing are the real ones). Signal and file-size-limit cases run a real subprocess,
``sys.executable -m fiacli``, with the oracle slowed down so there is time to interrupt it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from _oracle import Oracle, random_rgb, write_tif
from train_helpers import TINY_MODEL, make_synth

TESTS = Path(__file__).resolve().parent
ORACLE_SIZE = 32
pytestmark = pytest.mark.usefixtures("usual_signals")  # under nohup too

# --------------------------------------------------------------------------- the world


def _smooth(size: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([(xx // 4) % 256, (yy // 4) % 256, ((xx + yy) // 8) % 256]).astype(np.uint8)


def _damaged_deflate(path: Path) -> None:
    profile = dict(driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=rasterio.Affine(0.5, 0, 5e5, 0, -0.5, 4.1e6),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(_smooth())
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    for i in range(offset + size // 3, offset + size // 3 + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _cut_cog(path: Path, tmp: Path) -> None:
    from rasterio.shutil import copy

    full = write_tif(tmp / "full.tif", random_rgb(1024, 1024, seed=4), tiled=True)
    copy(str(full), str(tmp / "cog.tif"), driver="COG", compress="DEFLATE")
    path.write_bytes((tmp / "cog.tif").read_bytes()[:150_000])  # header intact, tiles cut


def _released(model, path: Path, args) -> None:
    from fiacli.models.convert import fiacli_to_released

    payload = {"model": fiacli_to_released(model.state_dict(), model.config)}
    if args is not None:
        payload["args"] = args
    torch.save(payload, path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _run_folder(run: Path) -> None:
    from PIL import Image

    run.mkdir()
    (run / "config.yaml").write_text("epochs: 2\nselect_metric: miou\n")
    records = [
        {"kind": "step", "epoch": 1, "step": 1, "loss": 1.0, "lr": 1e-3, "time": 1.0},
        {"kind": "epoch", "epoch": 1, "step": 1, "val_miou": 0.5, "val_oiou": 0.5},
        {"kind": "step", "epoch": 2, "step": 2, "loss": 0.5, "lr": 5e-4, "time": 2.0},
        {"kind": "epoch", "epoch": 2, "step": 2, "val_miou": 0.6, "val_oiou": 0.6},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    preds = run / "preds"
    preds.mkdir()
    (preds / "predictions.csv").write_text("ref_id,image_id,iou,expression\nr0,0,0.5,a ship\n")
    Image.new("RGB", (8, 8)).save(preds / "r0_overlay.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every input the cases use, built once (each case works on its own copy)."""
    from fiacli.models import FIANet, minimal_config, save_checkpoint
    from fiacli.text.parsing import ParseSettings

    root = tmp_path_factory.mktemp("world")
    scratch = tmp_path_factory.mktemp("scratch")
    write_tif(root / "s.tif", random_rgb(96, 96, seed=1), tiled=True)
    write_tif(root / "big.tif", random_rgb(512, 512, seed=2), tiled=True)
    write_tif(root / "ungeo.tif", random_rgb(64, 64, seed=3), crs=None, transform=None)
    write_tif(root / "nodata.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    write_tif(root / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))
    _damaged_deflate(root / "bad.tif")
    _cut_cog(root / "cut.tif", scratch)
    from rasterio.shutil import copy

    copy(str(root / "s.tif"), str(root / "scene.vrt"), driver="VRT")  # reads s.tif
    (root / "e.txt").write_text("the red car\nthe blue roof\n")
    (root / "c.txt").write_text("car\nroof\n")
    (root / "oracle.safetensors").write_bytes(b"the oracle stands in for this model")
    (root / "out.tif").write_bytes(b"an earlier result")
    (root / "k.dbf").write_bytes(b"an earlier shapefile table")
    (root / "old.jsonl").write_text("{}\n")

    torch.manual_seed(0)
    model = FIANet(minimal_config())
    parse = ParseSettings.for_dataset("rrsisd").to_dict()
    save_checkpoint(root / "m.safetensors", model, {"parse": parse})
    _released(model, root / "r.pth", {"dataset": "rrsisd", "img_size": 64})
    _released(model, root / "r_int.pth", 7)
    (root / "trunc.pth").write_bytes((root / "r.pth").read_bytes()[:1000])
    torch.save({"model": {}, "args": _Evil()}, root / "evil.pth")

    make_synth(root / "syn", train=8, val=4, test=4, size=64)
    (root / "empty").mkdir()
    tiny = {"dataset": "synth", "model": TINY_MODEL, "pretrained": False, "image_size": 32,
            "batch_size": 4,
            "num_workers": 0, "epochs": 1}  # fmt: skip
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    (root / "long.yaml").write_text(yaml.safe_dump({**tiny, "epochs": 400, "log_every": 1}))
    workers = {**tiny, "epochs": 400, "log_every": 1, "num_workers": 2}
    (root / "workers.yaml").write_text(yaml.safe_dump(workers))
    held = root / "held"
    held.mkdir()
    (held / "last.safetensors").write_bytes(b"a run already here")
    _run_folder(root / "run")
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and link under ``folder`` by relative path: its hash (links: their target)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "->" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel + "/"] = "dir"
    return out


def _links(w: Path) -> None:
    os.link(w / "s.tif", w / "hl.tif")
    (w / "sl.tif").symlink_to("s.tif")
    os.link(w / "m.safetensors", w / "m2.safetensors")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    line: str  # regex the one error/warning line must match
    kind: str = "error"
    oracle: bool = False  # segment with the oracle model
    strict: bool = True  # that line is all of stderr
    created: tuple[str, ...] = ()  # new files expected (cases that succeed)
    setup: Callable[[Path], None] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    process: bool = False  # a real subprocess (signals, file-size limit)
    send: int | None = None  # signal sent once the command writes
    wait_for: str = ".*tmp-*"  # glob that says it writes
    group: bool = False  # signal the whole process group (SLURM, kill -- -PGID), workers too
    fsize: int | None = None  # RLIMIT_FSIZE in bytes (EFBIG: a full disk)
    delay: float = 0.0  # seconds per oracle call in a subprocess
    check: Callable[[Path], None] | None = None
    marks: tuple = field(default=())


def seg(*args: str) -> tuple[str, ...]:
    """segment with the oracle (a stand-in file as -m, so no demo-model note)."""
    return ("segment", *args, "-m", "oracle.safetensors")


def _append_corrupt(w: Path) -> None:
    with open(w / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "step", "step": "abc"}\nnot json\n')


def _config_in_run(w: Path) -> None:
    (w / "newrun").mkdir()
    shutil.copy(w / "tiny.yaml", w / "newrun" / "config.yaml")


def _raise_in_predict(exc: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(mp: pytest.MonkeyPatch) -> None:
        def predict(self, chips, encoded):
            raise exc

        mp.setattr(Oracle, "predict", predict)

    return patch


def _disk_full_on_raster_write(mp: pytest.MonkeyPatch) -> None:
    import errno

    import rasterio.io

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(rasterio.io.DatasetWriter, "write", full)


def _skipped_in_manifest(w: Path) -> None:
    manifest = json.loads((w / "o.manifest.json").read_text())
    skipped = manifest["scene"]["skipped_windows"]
    assert skipped and all("tile 1,1" in s["reason"] for s in skipped), skipped


def _no_pwned(w: Path) -> None:
    assert not (w / "PWNED").exists(), "the pickle's code ran"


def _resumable(w: Path) -> None:
    state = torch.load(w / "trun" / "last.state.pt", weights_only=True)
    assert state["step"] >= 1
    assert not [p for p in (w / "trun").iterdir() if ".tmp-" in p.name]


slow = pytest.mark.slow

# fmt: off
CASES = [
    # ---------------------------------------------------------------- segment: usage (exit 2)
    Case("seg-scope", seg("s.tif", "red", "-o", "o.tif", "--scope", "nowhere"), 2, "--scope"),
    Case("seg-resolution-abc", seg("s.tif", "red", "-o", "o.tif", "--resolution", "abc"), 2,
         "--resolution"),
    Case("seg-resolution-nan", seg("s.tif", "red", "-o", "o.tif", "--resolution", "nan"), 2,
         "--resolution must be a positive"),
    Case("seg-resolution-inf", seg("s.tif", "red", "-o", "o.tif", "--resolution", "inf"), 2,
         "--resolution must be a positive"),
    Case("seg-resolution-negative", seg("s.tif", "red", "-o", "o.tif", "--resolution", "-2"), 2,
         "--resolution must be a positive"),
    Case("seg-resolution-tiny", seg("s.tif", "red", "-o", "o.tif", "--resolution", "1e-9"), 2,
         r"would upsample .* pixels"),  # was an OverflowError
    Case("seg-chip-small", seg("s.tif", "red", "-o", "o.tif", "--chip", "8"), 2, "--chip"),
    Case("seg-overlap-chip", seg("s.tif", "red", "-o", "o.tif", "--chip", "32", "--overlap", "32"),
         2, "--overlap"),
    Case("seg-threshold", seg("s.tif", "red", "-o", "o.tif", "--threshold", "1.5"), 2,
         "--threshold"),
    Case("seg-dst-crs", seg("s.tif", "red", "-o", "o.gpkg", "--dst-crs", "EPSG:999999"), 2,
         "--dst-crs"),  # and no "ERROR 1: PROJ" line before it (strict)
    Case("seg-empty-expression",
         ("segment", "s.tif", "-e", "", "-o", "o.tif", "-m", "oracle.safetensors"), 2, "empty"),
    Case("seg-unknown-option", seg("s.tif", "red", "--no-such-option"), 2, "--no-such-option"),
    Case("seg-bad-extension", seg("s.tif", "red", "-o", "o.xyz"), 2, "extension"),
    Case("seg-no-scene", ("segment",), 2, "no scene"),
    Case("seg-same-output-twice", seg("s.tif", "red", "-o", "o.gpkg", "-o", "./o.gpkg"), 2,
         "twice"),
    Case("seg-cog-without-tif", seg("s.tif", "red", "-o", "o.gpkg", "--cog"), 2, "--cog"),
    Case("seg-preview-not-png", seg("s.tif", "red", "-o", "o.gpkg", "--preview", "p.jpg"), 2,
         "PNG"),
    Case("seg-min-area-ungeoreferenced",
         seg("ungeo.tif", "red", "-o", "o.gpkg", "--min-area", "5", "--allow-ungeoreferenced"), 2,
         "georeferenced"),
    # ---------------------------------------------------------------- segment: inputs kept
    Case("seg-output-is-scene", seg("s.tif", "red", "-o", "s.tif", "-f"), 2, "is the input"),
    Case("seg-probabilities-is-scene",
         seg("s.tif", "red", "-o", "o.tif", "--probabilities", "s.tif", "-f"), 2, "is the input"),
    Case("seg-output-dot-slash", seg("s.tif", "red", "-o", "./s.tif", "-f"), 2, "is the input"),
    Case("seg-output-symlink", seg("s.tif", "red", "-o", "sl.tif", "-f"), 2, "is the input",
         setup=_links),
    Case("seg-output-hardlink", seg("s.tif", "red", "-o", "hl.tif", "-f"), 2, "is the input",
         setup=_links),
    Case("seg-output-is-vrt-source", seg("scene.vrt", "red", "-o", "s.tif", "-f"), 2,
         "is the input"),
    # ---------------------------------------------------------------- segment: errors (exit 1)
    Case("seg-output-exists", seg("s.tif", "red", "-o", "out.tif"), 1, "already exists"),
    Case("seg-sidecar-exists", seg("s.tif", "red", "-o", "k.shp"), 1,
         r"k\.dbf already exists \(it belongs with k\.shp\)"),
    Case("seg-scene-missing", seg("nope.tif", "red", "-o", "o.tif"), 1, "not found"),
    Case("seg-scene-not-raster", seg("e.txt", "red", "-o", "o.tif"), 1, "cannot read e.txt"),
    Case("seg-ungeoreferenced", seg("ungeo.tif", "red", "-o", "o.tif"), 1, "--allow-ungeo"),
    Case("seg-bands-missing", seg("s.tif", "red", "-o", "o.tif", "--bands", "1,2,9"), 1, "band 9"),
    Case("seg-expressions-missing", seg("s.tif", "-o", "o.tif", "--expressions", "nope.txt"), 1,
         "nope.txt"),
    Case("seg-output-folder-missing", seg("s.tif", "red", "-o", "nodir/o.tif"), 1,
         "does not exist"),
    Case("seg-model-missing", ("segment", "s.tif", "red", "-o", "o.tif", "-m", "nope.safetensors"),
         1, "model not found"),
    Case("seg-model-not-checkpoint", ("segment", "s.tif", "red", "-o", "o.tif", "-m", "e.txt"), 1,
         "not a fiacli checkpoint"),
    Case("seg-cut-cog", seg("cut.tif", "red", "-o", "o.tif", "--probabilities", "p.tif"), 1,
         "cut.tif"),
    Case("seg-damaged-deflate", seg("bad.tif", "red", "-o", "o.tif"), 1, "damaged DEFLATE"),
    Case("seg-damaged-deflate-skip", seg("bad.tif", "red", "-o", "o.tif", "--on-read-error",
                                         "skip"), 0, r"damaged window\(s\) of bad.tif",
         kind="warning", created=("o.tif", "o.manifest.json"), check=_skipped_in_manifest),
    Case("seg-on-read-error-unknown", seg("bad.tif", "red", "-o", "o.tif", "--on-read-error",
                                          "ignore"), 2, "--on-read-error"),
    Case("seg-bug", seg("s.tif", "red", "-o", "o.tif", "-o", "o.gpkg"), 1,
         "unexpected ZeroDivisionError in fiacli segment.*--debug",
         patch=_raise_in_predict(ZeroDivisionError("division by zero"))),
    Case("seg-disk-full", seg("s.tif", "red", "-o", "o.tif", "--probabilities", "p.tif"), 1,
         "disk full", patch=_disk_full_on_raster_write),
    Case("seg-out-of-memory", seg("s.tif", "red", "-o", "o.tif"), 1, "out of memory",
         patch=_raise_in_predict(MemoryError())),
    # ---------------------------------------------------------------- segment: warnings (exit 0)
    Case("seg-all-nodata", seg("nodata.tif", "red", "-o", "o.tif"), 0, "no valid pixel",
         kind="warning", created=("o.tif", "o.manifest.json")),
    Case("seg-all-nan", seg("nan.tif", "red", "-o", "o.tif"), 0, "no valid pixel", kind="warning",
         created=("o.tif", "o.manifest.json")),
    Case("seg-long-expression", ("segment", "s.tif", "the small white car parked " * 12, "-m",
                                 "m.safetensors", "-o", "o.tif"), 0, "cut to 22 tokens",
         kind="warning", created=("o.tif", "o.manifest.json")),  # the real predictor
    # ---------------------------------------------------------------- segment: signals, EFBIG
    Case("seg-sigterm", seg("big.tif", "red", "-o", "o.tif", "--probabilities", "p.tif"), 143,
         r"interrupted \(SIGTERM\)", process=True, send=signal.SIGTERM, delay=0.3, marks=()),
    Case("seg-sighup", seg("big.tif", "red", "-o", "o.tif", "-o", "o.gpkg"), 129,
         r"interrupted \(SIGHUP\)", process=True, send=signal.SIGHUP, delay=0.3, marks=()),
    Case("seg-sigint", seg("big.tif", "red", "-o", "o.tif"), 130, r"interrupted \(Ctrl-C\)",
         process=True, send=signal.SIGINT, delay=0.3, marks=()),
    # many scenes (with areas of interest too): the same exit codes as one scene
    Case("seg-many-sigterm", seg("big.tif", "s.tif", "-e", "red", "-o", "out/{stem}.tif"), 143,
         r"interrupted \(SIGTERM\)", strict=False, process=True, send=signal.SIGTERM, delay=0.3,
         wait_for="out/.*tmp-*", created=("out/",), marks=()),
    Case("seg-many-aoi-sigterm", seg("big.tif", "s.tif", "-e", "red", "-o", "out/{stem}.tif",
                                     "--bbox", "500010,4099800,500200,4099990"), 143,
         r"interrupted \(SIGTERM\)", strict=False, process=True, send=signal.SIGTERM, delay=0.3,
         wait_for="out/.fiacli-areas-*", created=("out/",), marks=()),  # its scratch folder
    Case("seg-file-size-limit", seg("big.tif", "red", "-o", "o.tif", "--probabilities", "p.tif"),
         1, "disk full|file-size limit", process=True, fsize=30000, marks=()),
    # ---------------------------------------------------------------- parse
    Case("parse-token-length", ("parse", "--token-length", "2", "the ship"), 2, "--token-length"),
    Case("parse-output-is-input", ("parse", "-i", "e.txt", "-o", "e.txt", "-f"), 2,
         "is the input"),
    Case("parse-output-is-classes",
         ("parse", "-i", "e.txt", "--classes", "c.txt", "-o", "c.txt", "-f"), 2, "is the input"),
    Case("parse-no-source", ("parse",), 2, "exactly one"),
    Case("parse-two-sources", ("parse", "the ship", "-i", "e.txt"), 2, "exactly one"),
    Case("parse-bad-mode", ("parse", "the ship", "--mode", "bogus"), 2, "--mode"),
    Case("parse-no-output", ("parse", "-i", "e.txt"), 2, "-o/--output"),
    Case("parse-unknown-split",
         ("parse", "--dataset", "rrsisd", "--data-root", "syn", "--split", "nowhere", "-o",
          "p.jsonl"), 2, "nowhere"),
    Case("parse-output-exists", ("parse", "-i", "e.txt", "-o", "old.jsonl"), 1, "already exists"),
    Case("parse-input-missing", ("parse", "-i", "nope.txt", "-o", "p.jsonl"), 1, "nope.txt"),
    Case("parse-long-expression", ("parse", "the big ship " * 2000, "--json"), 0,
         r"cut: .*characters\)", kind="warning"),
    # ---------------------------------------------------------------- eval
    Case("eval-unknown-split",
         ("eval", "-m", "m.safetensors", "--data-root", "syn", "--split", "nowhere"), 2,
         "nowhere"),
    Case("eval-json-and-csv",
         ("eval", "-m", "m.safetensors", "--data-root", "syn", "--json", "--csv"), 2, "--json"),
    Case("eval-preds-is-data",
         ("eval", "-m", "m.safetensors", "--data-root", "syn", "--save-preds", "syn"), 2,
         "is the input"),
    Case("eval-batch-size",
         ("eval", "-m", "m.safetensors", "--data-root", "syn", "--batch-size", "0"), 2,
         "--batch-size"),
    Case("eval-bad-dataset",
         ("eval", "-m", "m.safetensors", "--data-root", "syn", "--dataset", "bogus"), 2,
         "--dataset"),
    Case("eval-model-missing", ("eval", "-m", "nope.safetensors", "--data-root", "syn"), 1,
         "not found"),
    Case("eval-model-is-pickle", ("eval", "-m", "r.pth", "--data-root", "syn"), 1,
         "PyTorch pickle"),
    Case("eval-data-missing", ("eval", "-m", "m.safetensors", "--data-root", "nowhere"), 1,
         "nowhere"),
    # ---------------------------------------------------------------- convert
    Case("convert-target-mismatch", ("convert", "r.pth", "--to", "fiacli", "-o", "x.pth"), 2,
         r"--to fiacli writes \.safetensors"),
    Case("convert-unknown-target", ("convert", "r.pth", "--to", "bogus", "-o", "x.pth"), 2,
         "--to"),
    Case("convert-output-is-input",
         ("convert", "m.safetensors", "--to", "released", "-o", "m.safetensors", "-f"), 2,
         "is the input"),
    Case("convert-output-hardlink",
         ("convert", "m.safetensors", "--to", "released", "-o", "m2.safetensors", "-f"), 2,
         "is the input", setup=_links),
    Case("convert-already-fiacli", ("convert", "m.safetensors", "-o", "n.safetensors"), 1,
         "already a fiacli checkpoint"),
    Case("convert-hostile-pickle", ("convert", "evil.pth", "-o", "n.safetensors"), 1,
         "refusing to load", check=_no_pwned),
    Case("convert-truncated", ("convert", "trunc.pth", "-o", "n.safetensors"), 1,
         "not a readable PyTorch checkpoint"),
    Case("convert-missing", ("convert", "nope.pth", "-o", "n.safetensors"), 1, "not found"),
    Case("convert-args-int",
         ("convert", "r_int.pth", "-o", "n.safetensors", "--dataset", "rrsisd", "--text-heads",
          "2"), 0, "'args' entry is int", kind="warning", strict=False, created=("n.safetensors",)),
    # ---------------------------------------------------------------- train
    Case("train-max-steps-0",
         ("train", "--config", "tiny.yaml", "--data-root", "syn", "-o", "trun", "--max-steps", "0"),
         2, "--max-steps"),
    Case("train-time-budget-0",
         ("train", "--config", "tiny.yaml", "--data-root", "syn", "-o", "trun", "--time-budget",
          "0"), 2, "--time-budget"),
    Case("train-output-is-data",
         ("train", "--config", "tiny.yaml", "--data-root", "syn", "-o", "syn"), 2, "is the input"),
    Case("train-config-in-run",
         ("train", "--config", "newrun/config.yaml", "--data-root", "syn", "-o", "newrun"), 2,
         "is the input", setup=_config_in_run),
    Case("train-no-data-root", ("train", "-o", "trun"), 2, "--data-root"),
    Case("train-resume-missing", ("train", "-o", "nowhere", "--resume"), 1, "cannot resume"),
    Case("train-run-exists",
         ("train", "--config", "tiny.yaml", "--data-root", "syn", "-o", "held"), 1,
         "already holds a run"),
    Case("train-failed-start",
         ("train", "--config", "tiny.yaml", "--dataset", "synth", "--data-root", "empty", "-o",
          "trun"), 1, "empty"),
    Case("train-sigterm", ("train", "--config", "long.yaml", "--data-root", "syn", "-o", "trun"),
         143, r"interrupted \(SIGTERM\); saved a resumable checkpoint at step \d+", strict=False,
         process=True, send=signal.SIGTERM, wait_for="trun/last.safetensors", created=("trun/",),
         check=_resumable, marks=(slow,)),
    Case("train-sigterm-to-workers",
         ("train", "--config", "workers.yaml", "--data-root", "syn", "-o", "trun"), 143,
         r"interrupted \(SIGTERM\); saved a resumable checkpoint", strict=False, process=True,
         send=signal.SIGTERM, group=True, wait_for="trun/last.safetensors", created=("trun/",),
         check=_resumable, marks=(slow,)),  # SLURM: the DataLoader workers get it too
    Case("train-file-size-limit",
         ("train", "--config", "tiny.yaml", "--data-root", "syn", "-o", "trun"), 1,
         "could not save|disk full", strict=False, process=True, fsize=60000, marks=(slow,)),
    # ---------------------------------------------------------------- report
    Case("report-extension", ("report", "run", "-o", "r.txt"), 2, r"\.html or \.png"),
    Case("report-examples", ("report", "run", "--examples", "0"), 2, "--examples"),
    Case("report-output-is-input", ("report", "run", "-o", "run/preds/r0_overlay.png", "-f"), 2,
         "is the input"),
    Case("report-missing", ("report", "nowhere"), 1, "not found"),
    Case("report-not-a-run", ("report", "syn"), 1, "metrics.jsonl"),
    Case("report-corrupt-lines", ("report", "run", "-o", "r.html"), 0, "skipped 2 corrupt",
         kind="warning", strict=False, created=("r.html",), setup=_append_corrupt),
    # ---------------------------------------------------------------- data, models, root
    Case("synth-unknown-option", ("data", "synth", "--bogus"), 2, "--bogus"),
    Case("synth-exists", ("data", "synth", "-o", "syn"), 1, "already exists"),
    Case("synth-not-synthetic", ("data", "synth", "-o", "run", "-f"), 1, "refusing to replace"),
    Case("synth-sigterm", ("data", "synth", "-o", "dsyn", "--train", "3000", "--size", "256"), 143,
         r"interrupted \(SIGTERM\)", process=True, send=signal.SIGTERM, wait_for=".dsyn.*",
         marks=()),
    Case("models-add-missing-argument", ("models", "add"), 2, "Missing argument"),
    Case("models-add-not-a-checkpoint", ("models", "add", "x", "e.txt"), 1, "e.txt"),
    Case("models-remove-unknown", ("models", "remove", "nope"), 1, "nope"),
    Case("unknown-command", ("no-such-command",), 2, "no-such-command"),
]
# fmt: on


# --------------------------------------------------------------------------- running a case


def _oracle_loader(*args, **kwargs):
    return Oracle(image_size=ORACLE_SIZE)


SITE = """
import os, sys, time
if os.environ.get("FIACLI_TEST_ORACLE"):
    sys.path.insert(0, os.environ["FIACLI_TEST_TESTS"])
    from _oracle import Oracle
    import fiacli.app.pipeline as _pipeline

    _delay = float(os.environ.get("FIACLI_TEST_DELAY", "0"))

    class _Slow(Oracle):
        def predict(self, chips, encoded):
            time.sleep(_delay)
            return super().predict(chips, encoded)

    _pipeline.load_predictor = lambda *a, **k: _Slow(image_size=SIZE)
""".replace("SIZE", str(ORACLE_SIZE))


def _in_process(case: Case, w: Path, monkeypatch) -> tuple[int, str]:
    from typer.testing import CliRunner

    from fiacli.cli import app

    if case.oracle or "oracle.safetensors" in case.args:
        import fiacli.app.pipeline as pipeline

        monkeypatch.setattr(pipeline, "load_predictor", _oracle_loader)
    if case.patch is not None:
        case.patch(monkeypatch)
    monkeypatch.chdir(w)
    result = CliRunner().invoke(app, list(case.args), catch_exceptions=False)
    return result.exit_code, result.stderr


def _limits(fsize: int | None) -> Callable[[], None] | None:
    if fsize is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death: a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


def _subprocess(case: Case, w: Path, site: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get(
        "PYTHONPATH", "")]), "FIACLI_TEST_ORACLE": "1", "FIACLI_TEST_TESTS": str(TESTS),
        "FIACLI_TEST_DELAY": str(case.delay), "FIACLI_HOME": str(w / ".home"),
        "OMP_NUM_THREADS": "1", "COLUMNS": "60"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "fiacli", *case.args], cwd=w, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_limits(case.fsize),
        start_new_session=case.group,
    )  # fmt: skip
    try:
        if case.send is not None:
            deadline = time.monotonic() + 60
            while not list(w.glob(case.wait_for)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    out, err = proc.communicate()
                    pytest.fail(f"{case.id}: never started writing ({case.wait_for}): {err}")
                time.sleep(0.02)
            if case.group:
                os.killpg(proc.pid, case.send)
            else:
                proc.send_signal(case.send)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(SITE)
    return folder


def _param(case: Case):
    return pytest.param(case, id=case.id, marks=case.marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault(case: Case, world: Path, site: Path, tmp_path: Path, monkeypatch) -> None:
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    monkeypatch.setenv("FIACLI_HOME", str(w / ".home"))
    if case.setup is not None:
        case.setup(w)
    before = snapshot(w)

    code, stderr = _subprocess(case, w, site) if case.process else _in_process(case, w, monkeypatch)

    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    marked = [ln for ln in lines if ln.startswith(("error:", "warning:"))]
    assert code == case.code, f"exit {code}, expected {case.code}: {stderr}"
    assert len(marked) == 1, f"expected one error/warning line, got: {lines}"
    assert marked[0].startswith(f"{case.kind}:"), marked[0]
    assert re.search(case.line, marked[0]), f"{case.line!r} not in {marked[0]!r}"
    if case.strict:
        assert lines == marked, f"stderr holds more than its one line: {lines}"
    assert not any(ln.startswith(("ERROR ", "Warning ")) for ln in lines), lines  # GDAL's own

    after = snapshot(w)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"inputs or earlier files changed: {changed}"
    new = sorted(set(after) - set(before))
    assert not [p for p in new if ".tmp-" in p or "/.fiacli-" in p or p.startswith(".fiacli-")]
    expected = [p for p in new if any(p == c or p.startswith(c) for c in case.created)]
    assert new == expected, f"left behind: {sorted(set(new) - set(expected))}"
    for name in case.created:
        assert name in after or name.rstrip("/") + "/" in after, f"{name} was not written"
    if case.check is not None:
        case.check(w)


def test_the_matrix_is_wide():
    """At least 60 cases, and every command appears."""
    assert len(CASES) >= 60
    commands = {c.args[0] for c in CASES}
    assert {"segment", "parse", "eval", "convert", "train", "report", "data", "models"} <= commands
    assert len({c.id for c in CASES}) == len(CASES)


def test_after_sigkill_the_next_run_removes_the_killed_runs_litter(
    world: Path, site: Path, tmp_path: Path
) -> None:
    """SIGKILL (the OOM killer) runs no cleanup: temporary files stay. Run again, and they go."""
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    args = seg("s.tif", "red", "-o", "o.tif", "-o", "o.gpkg", "--probabilities", "p.tif",
               "--cog")  # fmt: skip
    killed = Case("kill", args, -signal.SIGKILL, "", process=True, send=signal.SIGKILL, delay=0.3)
    code, _ = _subprocess(killed, w, site)
    assert code == -signal.SIGKILL
    litter = [p.name for p in w.iterdir() if ".tmp-" in p.name or p.name.startswith(".fiacli-")]
    assert litter, "the killed run left nothing behind: nothing to test"
    code, stderr = _subprocess(Case("again", args, 0, "", process=True), w, site)
    assert code == 0, stderr
    assert f"that killed fiacli runs left in {w}" in stderr
    left = [p.name for p in w.iterdir() if ".tmp-" in p.name or p.name.startswith(".fiacli-")]
    assert not left, left
    assert {"o.tif", "o.gpkg", "p.tif"} <= {p.name for p in w.iterdir()}

"""GPU check for ``fiacli segment`` (#9): does everything around the model keep the device busy?

    python bench/gpu_check.py                  # one H100/H200: about 4-8 minutes
    python bench/gpu_check.py --smoke          # tiny sizes, any machine (CPU too): a minute
    python bench/gpu_check.py --out gpu.json   # also write the figures as JSON

For fianet-swinb (random weights) in bf16 and fp32, and fianet-tiny in bf16, on chips of 480²:

* ``model_only``: chips/s of a pure loop of ``predict_tensor`` on chips already on the device
  (the ceiling) and of ``predict`` (host uint8 in, float32 maps back), same chips, batch size
  chosen by ``--batch-size auto`` (reported), peak device memory;
* ``end_to_end``: ``segment_raster`` on a generated 20,000² JPEG-YCbCr orthophoto (2,704 chips;
  mask + probabilities written), chips/s over the streaming pass, its ratio to the model-only
  chips/s, device utilisation sampled every 0.1 s during the pass (``torch.cuda.utilization``,
  else ``nvidia-smi``), peak device memory, the stage that bounds the run, and the 50,000²
  scene's time extrapolated from the end-to-end rate (16,900 chips at 96 px overlap);
* ``training``: 20 steps of fianet-swinb at batch 8, 480², AdamW, bf16 autocast and fp16 with
  loss scaling (GradScaler): it/s and peak device memory.

Only torch (and timm/transformers, as fiacli's models need) is required for the model-only and
training parts; text is random token ids (no tokenizer, no NLTK). The end-to-end part needs
rasterio and shapely: where they are missing it is skipped with a message. To carry them to a
machine that cannot reach a package index, download the wheels into an ignored folder of the
checkout (``build/`` is git-ignored) and install from there on the machine::

    pip download rasterio shapely --only-binary=:all: --python-version 3.11 \\
        --platform manylinux2014_x86_64 -d build/wheels      # ~30 MB with their dependencies
    # on the GPU machine, from the checkout (carry build/wheels along):
    pip install --no-index --find-links build/wheels rasterio shapely

(``.tif`` outputs need no more; polygons would also need pyogrio, pyproj and geopandas.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # the checkout's fiacli, when not installed
sys.path.insert(0, str(HERE.parent))  # bench/segment.py (the orthophoto)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class Utilisation:
    """Device utilisation (%) sampled on a thread every ``period`` seconds while in use."""

    def __init__(self, device, period: float = 0.1) -> None:
        self.device, self.period = device, period
        self.samples: list[float] = []
        self.source = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float | None:
        import torch

        if self.device.type != "cuda":
            return None
        if self.source in (None, "torch"):
            try:
                value = float(torch.cuda.utilization(self.device))
                self.source = "torch.cuda.utilization"
                return value
            except Exception:  # no pynvml
                self.source = "nvidia-smi"
        if self.source == "nvidia-smi" and shutil.which("nvidia-smi"):
            index = self.device.index or 0
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", str(index)], capture_output=True, text=True, timeout=5,
            ).stdout.strip()  # fmt: skip
            return float(out) if out else None
        self.source = "not available"
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self._sample()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"source": self.source or "not available (CPU)", "samples": 0}
        s = np.asarray(self.samples)
        return {"source": self.source, "samples": len(s), "mean_pct": round(float(s.mean()), 1),
                "median_pct": float(np.median(s)), "min_pct": float(s.min())}  # fmt: skip


def random_text(device):
    """A 20-token expression as token ids (no tokenizer): [CLS] ... [SEP], object and position
    words marked, as bench/model_forward.py does."""
    import torch

    from fiacli.models import TextBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 3000, (1, 20), generator=g)
    ids[:, 0], ids[:, 12] = 101, 102
    ids[:, 13:] = 0
    obj = torch.zeros_like(ids)
    obj[:, 3:5] = 1
    pos = torch.zeros_like(ids)
    pos[:, 7:11] = 1
    return TextBatch(ids, (ids > 0).long(), obj, pos).to(device)


def build_model(preset: str, chip: int):
    """``preset`` with random weights; fianet-tiny without its offline text-encoder package
    gets the same MiniLM-L6 architecture from a written config.json."""
    from fiacli.models import create_model

    overrides = {} if chip == 480 else {"image_size": chip}
    try:
        return create_model(preset, pretrained=False, **overrides)
    except Exception as exc:
        if preset != "fianet-tiny":
            raise
        folder = Path(tempfile.mkdtemp(prefix="minilm-config-"))
        (folder / "config.json").write_text(json.dumps({
            "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
            "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
            "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
        }))  # fmt: skip
        print(f"note: {preset} built with a written MiniLM-L6 config ({exc})", file=sys.stderr)
        return create_model(preset, pretrained=False, text_encoder=folder, **overrides)


def make_predictor(preset: str, precision: str, chip: int, device: str):
    """A RefSegPredictor whose expressions are random token ids (encode needs no tokenizer)."""
    import torch

    from fiacli.app.predictor import EncodedExpression, RefSegPredictor

    class Predictor(RefSegPredictor):
        def encode(self, expression: str, *, drop_position: bool = False) -> EncodedExpression:
            from fiacli.core.device import autocast

            with torch.inference_mode(), autocast(self.device, self.precision):
                features = self.model.encode_text(random_text(self.device))
            return EncodedExpression(expression, None, features)

        def encode_many(self, expressions, *, drop_position=False, on_batch=None):
            out = [self.encode(e, drop_position=drop_position) for e in expressions]
            if on_batch is not None:
                on_batch(len(out))
            return out

    torch.manual_seed(0)
    return Predictor(build_model(preset, chip), {}, device=device, precision=precision)


def synthetic_chips(n: int, chip: int) -> np.ndarray:
    """``n`` textured uint8 chips (speed does not depend on the content)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n, 3, chip // 8, chip // 8), dtype=np.uint8)
    return base.repeat(8, axis=2).repeat(8, axis=3)[:, :, :chip, :chip].copy()


def model_only(predictor, chips: np.ndarray, batch: int, total: int) -> dict:
    """Chips/s of predict_tensor on device-resident chips, and of predict (host in/out)."""
    import torch

    device = predictor.device
    encoded = predictor.encode("the storage tank")
    on_device = torch.from_numpy(chips).to(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def loop(fn) -> float:
        fn(0)  # warm-up
        sync()
        t0 = time.perf_counter()
        done = 0
        while done < total:
            fn(done)
            done += batch
        sync()
        return done / (time.perf_counter() - t0)

    def dev(i: int) -> None:
        k = i % max(1, len(chips) - batch + 1)
        predictor.predict_tensor(on_device[k : k + batch], encoded)

    def host(i: int) -> None:
        k = i % max(1, len(chips) - batch + 1)
        predictor.predict(chips[k : k + batch], encoded)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device) as util:
        device_rate = loop(dev)
    host_rate = loop(host)
    out = {
        "batch_size": batch,
        "chips": total,
        "chips_per_s_on_device": round(device_rate, 1),
        "chips_per_s_host_in_out": round(host_rate, 1),
        "utilisation": util.summary(),
    }
    if cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def end_to_end(predictor, scene: Path, folder: Path, model_rate: float) -> dict:
    import torch

    from fiacli.app.pipeline import segment_raster
    from fiacli.geo.tiling import ChipGrid

    device = predictor.device
    folder = folder / "outputs"
    folder.mkdir(exist_ok=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device) as util:
        t0 = time.perf_counter()
        r = segment_raster(scene, "the storage tank", [folder / "mask.tif"],
                           probabilities=folder / "prob.tif", predictor=predictor,
                           overwrite=True, manifest=False)  # fmt: skip
        wall = time.perf_counter() - t0
    stream = r.stages["wall_s"]
    chips = r.chips["predicted"]
    rate = chips / stream
    big = len(ChipGrid(50_000, 50_000, predictor.image_size, round(predictor.image_size / 5)))
    out = {
        "scene": f"{r.scene['width']}x{r.scene['height']}",
        "chips": chips,
        "batch_size": r.stages["batch_size"],
        "blend_on_device": r.stages["blend_on_device"],
        "seconds_total": round(wall, 1),
        "seconds_stream": round(stream, 1),
        "chips_per_s": round(rate, 1),
        "over_model_only": round(rate / model_rate, 3),
        "bound_by": r.stages["bound_by"],
        "stages": {
            k: {f: v[f] for f in ("threads", "busy_s", "wait_input_s", "wait_output_s")}
            for k, v in r.stages["stages"].items()
        },  # fmt: skip
        "utilisation": util.summary(),
        "timings_s": r.timings_s,
        "extrapolated_50000_squared_s": round(big / rate + (wall - stream) * 6.25, 1),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    for p in folder.glob("*.tif"):
        p.unlink()
    return out


def training(device: str, precision: str, *, preset: str, chip: int, batch: int,
             steps: int) -> dict:  # fmt: skip
    """``steps`` optimiser steps; fp16 with loss scaling (GradScaler), bf16 without."""
    import torch

    from fiacli.core.device import autocast, resolve_device
    from fiacli.training.losses import SegmentationLoss

    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        return {"skipped": "fp16 needs CUDA"}
    torch.manual_seed(0)
    model = build_model(preset, chip).to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    loss_fn = SegmentationLoss().to(dev)
    text = random_text(dev)
    text = type(text)(*(t.expand(batch, -1).contiguous() for t in vars(text).values()))
    image = torch.randn(batch, 3, chip, chip, device=dev)
    target = (torch.rand(batch, chip, chip, device=dev) > 0.7).long()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(dev, precision):
            loss = loss_fn(model(image, text), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()  # warm-up (allocations, cudnn)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    out = {"preset": preset, "precision": precision, "batch": batch, "size": chip,
           "steps": steps, "it_per_s": round(steps / seconds, 2)}  # fmt: skip
    if dev.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (fianet-minimal, 64-px chips, a 600² scene): any machine",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=None, help="scene side (default 20000)")
    ap.add_argument("--cache", default=None, help="folder for the generated scene")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", default=None, help="also write the report as JSON")
    args = ap.parse_args()

    import torch

    from fiacli.core.device import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.smoke:
        runs, chip, size, train = (
            [("fianet-minimal", "bf16"), ("fianet-minimal", "fp32")],
            64,
            600,
            ("fianet-minimal", 64, 2, 2),
        )  # noqa: E501
    else:
        runs = [("fianet-swinb", "bf16"), ("fianet-swinb", "fp32"), ("fianet-tiny", "bf16")]
        chip, size, train = 480, 20_000, ("fianet-swinb", 480, 8, 20)
    size = args.size or size
    report: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": args.smoke,
        "rasterio": _have("rasterio") and _have("shapely"),
        "cpus": os.cpu_count(),
    }
    if not cuda:
        report["note"] = "no CUDA device: figures are CPU figures, not GPU figures"
    t_start = time.perf_counter()
    scene = None
    with tempfile.TemporaryDirectory(prefix="fiacli-gpu-check-") as tmp:
        folder = Path(tmp)
        if report["rasterio"]:
            from segment import orthophoto

            t0 = time.perf_counter()
            cache = Path(args.cache) if args.cache else folder
            scene = orthophoto(cache, size)
            report["scene"] = {"path": str(scene), "side": size,
                               "generate_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        else:
            report["end_to_end"] = ("skipped: rasterio/shapely are not importable here (see this "
                                    "script's docstring to carry their wheels)")  # fmt: skip
            print(report["end_to_end"], file=sys.stderr)
        chips = synthetic_chips(64, chip)
        report["segment"] = []
        for preset, precision in runs:
            t0 = time.perf_counter()
            predictor = make_predictor(preset, precision, chip, str(device))
            encoded = predictor.encode("the storage tank")
            batch = predictor.auto_batch_size(chip, encoded) or 4
            n_scene = (-(-size // (chip - round(chip / 5)))) ** 2  # chips of the scene
            entry = {"preset": preset, "precision": precision, "chip": chip,
                     "auto_batch_size": batch}  # fmt: skip
            entry["model_only"] = model_only(predictor, chips, batch, min(n_scene, 2048))
            if scene is not None:
                rate = entry["model_only"]["chips_per_s_on_device"]
                entry["end_to_end"] = end_to_end(predictor, scene, folder, rate)
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            report["segment"].append(entry)
            print(json.dumps(entry), flush=True)
            del predictor
            if cuda:
                torch.cuda.empty_cache()
        if not args.skip_train:
            preset, tchip, tbatch, steps = train
            report["training"] = [
                training(str(device), p, preset=preset, chip=tchip, batch=tbatch, steps=steps)
                for p in ("bf16", "fp16")
            ]
            print(json.dumps(report["training"]), flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    with contextlib.suppress(Exception):
        print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()

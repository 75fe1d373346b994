"""Latency and peak memory of one FIANet forward, per preset, text encoded per call vs once.

    python bench/model_forward.py                      # both presets, 480², CPU (CUDA if present)
    python bench/model_forward.py --presets fianet-tiny --size 240 --batch 8 --backward
    python bench/model_forward.py --released ../FIANet # fianet-swinb vs the authors' code

Each preset runs in a fresh subprocess so that its peak memory is its own (CPU: peak RSS minus
the RSS after building the model; CUDA: ``max_memory_allocated``). Weights are random (no
download); speed does not depend on them. Figures: median of ``--repeats`` timed runs after one
warm-up.

``--released PATH`` compares fiacli with the authors' released code instead (PATH: a checkout of
github.com/Shaosifan/FIANet, or its bare git directory, which is extracted to a temporary
folder). One subprocess builds both models at full size (Swin-B window 12, BERT-base, ``num_tmem``
1): the released ``LAVTOne`` from PATH's ``lib/`` and ``bert/`` with random weights, and fiacli's
``fianet-swinb`` holding the same weights (converted as ``fiacli convert`` does, so both compute
the same function; the largest logit difference is printed). mmcv, mmseg and requests are only
used by the released code to load pretrained weights or download, so they are replaced by stub
modules while its files are imported. The two forwards then alternate on the same inputs, same
threads (fiacli first in even rounds, released first in odd ones), each with the text encoded
in the call (the released forward runs BERT three times). Printed: both medians per image and
fiacli/released, from the medians, as the median of the per-round ratios and in process CPU
seconds. On a machine other jobs load, wall medians swing by several times; the per-round
ratio and the CPU ratio hold up better, and a warning says when the load was high.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

# modules the released files import that its forward never uses (pretrained-weight loading,
# downloads); each is replaced by a stub while those files are imported. "requests" only when
# it is not installed.
_RELEASED_STUBS = {
    "mmcv": (),
    "mmcv.fileio": ("FileClient", "load"),
    "mmcv.parallel": ("is_module_wrapper",),
    "mmcv.runner": ("get_dist_info",),
    "mmcv.utils": ("mkdir_or_exist",),
    "mmseg": (),
    "mmseg.utils": ("get_root_logger",),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(batch: int, size: int, device):
    """A random normalised image batch and a 20-token expression: [CLS] at 0, [SEP] at 12,
    object words at 3-4, position words at 7-10 (int64 0/1 masks, as the released loader)."""
    import torch

    from fiacli.models import TextBatch

    ids = torch.randint(1000, 3000, (batch, 20))
    ids[:, 0], ids[:, 12] = 101, 102
    ids[:, 13:] = 0
    context = (ids > 0).long()
    obj = torch.zeros_like(ids)
    obj[:, 3:5] = 1
    pos = torch.zeros_like(ids)
    pos[:, 7:11] = 1
    image = torch.randn(batch, 3, size, size, device=device)
    return image, TextBatch(ids, context, obj, pos).to(device)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from fiacli.core.device import resolve_device
    from fiacli.models import count_parameters, create_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = create_model(args.worker, pretrained=False).to(device).eval()
    image, text = _inputs(args.batch, args.size, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cpu_seconds: dict[str, float] = {}

    def timed(fn, name: str) -> float:
        """Median wall seconds; also keeps the median process CPU seconds (all threads), which
        a machine shared with other jobs inflates far less than wall time."""
        fn()  # warm-up
        sync()
        wall, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        cpu_seconds[name] = statistics.median(cpu)
        return statistics.median(wall)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_built = _rss_mb()
    result = {
        "preset": args.worker,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "parameters_m": round(count_parameters(model) / 1e6, 1),
    }
    with torch.inference_mode():
        feats = model.encode_text(text)
        result["encode_text_s"] = timed(lambda: model.encode_text(text), "encode_text")
        result["forward_text_per_call_s"] = timed(lambda: model(image, text), "text_per_call")
        result["forward_cached_text_s"] = timed(lambda: model(image, feats), "cached_text")
    if args.backward:
        model.train()
        with torch.no_grad():  # not inference_mode: these features enter an autograd graph
            feats = model.encode_text(text)

        def step() -> None:
            model(image, feats).logsumexp(1).mean().backward()
            model.zero_grad(set_to_none=True)

        result["forward_backward_s"] = timed(step, "forward_backward")
    result["cpu_seconds"] = {k: round(v, 3) for k, v in cpu_seconds.items()}
    result["load_average"] = os.getloadavg()[0]
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        result["peak_memory_mb"] = round(_peak_rss_mb() - rss_built)
        result["model_rss_mb"] = round(rss_built)
    return result


# --------------------------------------------------------------------------- released code


def _released_tree(path: str, scratch: str) -> tuple[Path, str]:
    """The folder holding the released ``lib/`` and ``bert/``, and its commit (or "?").

    ``path`` is a checkout, or a bare git directory (as ``git clone --bare`` or a mirror gives)
    whose HEAD is extracted under ``scratch``."""
    root = Path(path).expanduser().resolve()

    def git(*cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *cmd], capture_output=True, check=False, **kw)

    if (root / "lib" / "segmentation.py").is_file() and (root / "bert").is_dir():
        done = git("-C", str(root), "rev-parse", "HEAD", text=True)
        return root, done.stdout.strip() if done.returncode == 0 else "?"
    done = git(f"--git-dir={root}", "rev-parse", "HEAD", text=True)
    if done.returncode:
        sys.exit(
            f"--released {path}: neither a FIANet checkout (no lib/segmentation.py) nor a git dir"
        )
    commit = done.stdout.strip()
    archive = git(f"--git-dir={root}", "archive", "--format=tar", commit, "lib", "bert")
    if archive.returncode:
        sys.exit(f"--released {path}: no lib/ and bert/ at {commit[:8]}: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
    return Path(scratch), commit


@contextlib.contextmanager
def _released_imports(tree: Path):
    """Import context for the released files: ``tree`` first on sys.path, stub modules for
    what they import only to load pretrained weights, all removed again on exit (the imported
    ``lib`` and ``bert`` packages stay)."""
    for name in ("lib", "bert"):
        if name in sys.modules:
            sys.exit(
                f"a module named {name!r} is already imported; cannot import the released code"
            )

    def unused(*_args, **_kwargs):
        raise RuntimeError("stub: the released code's weight loading is not available here")

    stubs = dict(_RELEASED_STUBS)
    try:
        import requests  # noqa: F401  (bert/file_utils.py imports it at module level)
    except ImportError:
        stubs["requests"] = ("get", "head")
    saved = {name: sys.modules.get(name) for name in stubs}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(dict.fromkeys(attrs, unused))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    sys.path.insert(0, str(tree))
    try:
        yield
    finally:
        sys.path.remove(str(tree))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def build_released(tree: Path, num_tmem: int = 1):
    """The released ``LAVTOne`` at full size (Swin-B window 12, BERT-base), random weights, as
    ``lib.segmentation.lavt_one('', args)`` builds it for test.py, with the BERT of
    bert-base-uncased's architecture (HF 3.0.2 ``BertConfig()`` defaults) instead of
    ``BertModel.from_pretrained``."""
    with _released_imports(tree), contextlib.redirect_stdout(sys.stderr):
        from bert.configuration_bert import BertConfig
        from bert.modeling_bert import BertModel
        from lib.segmentation import lavt_one

        args = argparse.Namespace(
            swin_type="base",
            window12=True,
            mha="",
            fusion_drop=0.0,
            num_tmem=num_tmem,
            ck_bert="bert-base-uncased",
        )
        # inherited from PreTrainedModel; shadowed on BertModel for the build only
        BertModel.from_pretrained = classmethod(lambda cls, *_a, **_k: cls(BertConfig()))
        try:
            return lavt_one("", args)
        finally:
            del BertModel.from_pretrained


def compare_worker(args: argparse.Namespace) -> dict:
    """fianet-swinb and the released model, alternately, same inputs, same process."""
    import torch

    from fiacli.core.device import resolve_device
    from fiacli.models import count_parameters, create_model
    from fiacli.models.convert import released_to_fiacli

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="fianet-released-") as scratch:
        tree, commit = _released_tree(args.released, scratch)
        released = build_released(tree).eval()
    ours = create_model("fianet-swinb", pretrained=False).eval()
    state = released.state_dict()
    ours.load_state_dict(
        released_to_fiacli(state, ours.config, list(ours.state_dict())), strict=True
    )
    del state
    released.to(device)
    ours.to(device)
    image, text = _inputs(args.batch, args.size, device)
    masks = (text.context_mask, text.object_mask, text.position_mask)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs = {
        "fiacli": lambda: ours(image, text),
        "released": lambda: released(image, text.input_ids, *masks),
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        out = {name: fn() for name, fn in runs.items()}  # warm-up, and the agreement check
        sync()
        diff = (out["fiacli"] - out["released"]).abs().max().item()
        same_argmax = (out["fiacli"].argmax(1) == out["released"].argmax(1)).float().mean().item()
        del out
        order = list(runs)
        for rnd in range(args.repeats):
            for name in order if rnd % 2 == 0 else order[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                runs[name]()
                sync()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        "released_path": str(Path(args.released).expanduser().resolve()),
        "released_commit": commit,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "parameters_m": {
            "fiacli": round(count_parameters(ours) / 1e6, 1),
            "released": round(sum(p.numel() for p in released.parameters()) / 1e6, 1),
        },
        "max_abs_logit_diff": diff,
        "argmax_agreement": same_argmax,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_average": os.getloadavg()[0],
    }


def print_comparison(r: dict, repeats: int) -> None:
    per = r["batch"]
    med = {k: statistics.median(v) / per for k, v in r["wall_s"].items()}
    ratios = [f / o for f, o in zip(r["wall_s"]["fiacli"], r["wall_s"]["released"], strict=True)]
    cpu = {k: statistics.median(v) / per for k, v in r["cpu_s"].items()}
    params = r["parameters_m"]
    print(
        f"one forward at {r['size']}² (batch {r['batch']}), text encoded in the call, "
        f"{repeats} alternating rounds after one warm-up each, {r['device']} x{r['threads']}"
    )
    print(f"released code: {r['released_path']} @ {r['released_commit'][:8]}")
    for name in ("fiacli", "released"):
        runs = ", ".join(f"{t / per:.2f}" for t in r["wall_s"][name])
        label = "fiacli fianet-swinb" if name == "fiacli" else "released LAVTOne"
        print(
            f"{label:20s} {params[name]:6.1f} M params  median {med[name]:.3f} s per image  "
            f"(runs {runs})  process CPU {cpu[name]:.2f} s"
        )
    print(
        f"fiacli/released: {med['fiacli'] / med['released']:.2f}× (medians); per-round "
        f"{statistics.median(ratios):.2f}× median, {min(ratios):.2f}-{max(ratios):.2f}; "
        f"process CPU {cpu['fiacli'] / cpu['released']:.2f}×"
    )
    print(
        f"same weights: max |logit difference| {r['max_abs_logit_diff']:.1e}, argmax agrees on "
        f"{r['argmax_agreement']:.2%} of pixels   "
        f"(load average {r['load_average']:.1f} on {os.cpu_count()} CPUs)"
    )
    busy = r.get("load_average_before", 0.0)
    if busy > 0.5 * (os.cpu_count() or 1):
        print(
            f"busy machine: load average {busy:.1f} before the run, so other jobs shared these "
            "CPUs; the medians are unreliable, trust the per-round ratio and process CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", help="default: fianet-tiny fianet-swinb")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--released",
        metavar="PATH",
        help="time fianet-swinb against the authors' code at PATH (a checkout of "
        "github.com/Shaosifan/FIANet or its bare git dir), alternately in one process",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "compare":
        print(json.dumps(compare_worker(args)))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.released:
        if args.backward or args.presets:
            parser.error("--released times the forward of fianet-swinb only")
        cmd = [sys.executable, __file__, "--worker", "compare", *sys.argv[1:]]
        load_before = os.getloadavg()[0]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"comparison failed:\n{done.stderr}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["load_average_before"] = load_before
        if args.json:
            print(json.dumps(row, indent=2))
        else:
            print_comparison(row, args.repeats)
        return

    rows = []
    for preset in args.presets or ["fianet-tiny", "fianet-swinb"]:
        cmd = [sys.executable, __file__, "--worker", preset, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{preset} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"one forward at {args.size}² (batch {args.batch}), median of {args.repeats}")
    for r in rows:
        saved = 1 - r["forward_cached_text_s"] / r["forward_text_per_call_s"]
        line = (
            f"{r['preset']:13s} {r['parameters_m']:6.1f} M params  {r['device']} x{r['threads']}  "
            f"text per call {r['forward_text_per_call_s']:.3f} s  "
            f"text cached {r['forward_cached_text_s']:.3f} s ({saved:.0%} saved)  "
            f"encode_text {r['encode_text_s'] * 1000:.0f} ms  peak +{r['peak_memory_mb']} MB"
        )
        if "forward_backward_s" in r:
            line += f"  fwd+bwd {r['forward_backward_s']:.2f} s"
        print(line)
        cpu = r["cpu_seconds"]
        print(
            f"{'':13s} process CPU s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            + f"   (load average {r['load_average']:.1f} on {os.cpu_count()} CPUs)"
        )


if __name__ == "__main__":
    main()

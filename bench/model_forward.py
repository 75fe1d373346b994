"""Latency and peak memory of one FIANet forward, per preset, text encoded per call vs once.

    python bench/model_forward.py                      # both presets, 480², CPU (CUDA if present)
    python bench/model_forward.py --presets fianet-tiny --size 240 --batch 8 --backward

Each preset runs in a fresh subprocess so that its peak memory is its own (CPU: peak RSS minus
the RSS after building the model; CUDA: ``max_memory_allocated``). Weights are random (no
download); speed does not depend on them. Reference: the released code takes about 4.1 s per 480²
image on the project's 2-core CPU for the paper configuration (random weights, 3 BERT passes).

Figures: median of ``--repeats`` timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

RELEASED_CPU_SECONDS = 4.1  # released code, fianet-swinb config, one 480² image, this CPU


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    import torch

    from fiacli.core.device import resolve_device
    from fiacli.models import TextBatch, count_parameters, create_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = create_model(args.worker, pretrained=False).to(device).eval()
    ids = torch.randint(1000, 3000, (args.batch, 20))
    ids[:, 0], ids[:, 12] = 101, 102
    ids[:, 13:] = 0
    context = (ids > 0).long()
    obj = torch.zeros_like(ids)
    obj[:, 3:5] = 1
    pos = torch.zeros_like(ids)
    pos[:, 7:11] = 1
    text = TextBatch(ids, context, obj, pos).to(device)
    image = torch.randn(args.batch, 3, args.size, args.size, device=device)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fianet-tiny", "fianet-swinb"])
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    for preset in args.presets:
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
        per_image = r["forward_text_per_call_s"] / r["batch"]
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
        if r["preset"] == "fianet-swinb" and args.size == 480 and r["device"] == "cpu":
            print(
                f"{'':13s} released code: {RELEASED_CPU_SECONDS:.1f} s per 480² image; fiacli "
                f"{per_image:.2f} s per image = {per_image / RELEASED_CPU_SECONDS:.2f}× released"
            )


if __name__ == "__main__":
    main()

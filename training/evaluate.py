"""Evaluation behind ``fiacli eval`` and the trainer's validation: metrics (docs/metrics.md) and
paper tables.

Scores are computed at the model's input size (480² for the paper models) against the ground
truth resized with nearest neighbour, exactly as published; ``full_res`` instead upsamples the
logits to each image's own size and scores against the original mask. Samples flagged
``position_only`` (synthetic twins that differ only by place) are also scored as a subset, which is
how the learning check measures spatial reasoning.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, default_collate

from fiacli.core.errors import FiacliError
from fiacli.core.signals import ignore_terminating_signals
from fiacli.training.metrics import THRESHOLDS, RefSegMetrics, metric_groups

POSITION_ONLY = "position-only"
PR_KEYS = tuple(f"pr@{t:g}" for t in THRESHOLDS)


@dataclass
class EvalResult:
    """The metrics (docs/metrics.md) of one split: ``metrics`` as :meth:`RefSegMetrics.compute`
    returns them (fractions in [0, 1]), plus subsets (``position-only``) and what was evaluated."""

    metrics: dict[str, Any]
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def overall(self) -> dict[str, float]:
        """The scalar metrics (n, miou, oiou, pr@X), without the per-category table."""
        return {k: v for k, v in self.metrics.items() if k != "per_category"}

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "metrics": self.metrics, "subsets": self.subsets}


def _eval_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collate, except full-resolution masks (sizes differ) stay a list."""
    full = [s.pop("mask_full") for s in samples] if "mask_full" in samples[0] else None
    batch = default_collate(samples)
    if full is not None:
        batch["mask_full"] = full
    return batch


def _shard(dataset: Any, rank: int, world: int) -> Any:
    """Every ``world``-th sample from ``rank``: no padding, so no sample counts twice."""
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    dataset: Any,
    text_for: Callable[[torch.Tensor, torch.device], Any],
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 8,
    num_workers: int = 0,
    dist: Any = None,
    full_res: bool = False,
    save_preds: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score ``model`` on ``dataset`` (samples with ``text_index``; see ``data_pipeline``).

    ``text_for(rows, device)`` returns the text input (token batch or cached features) of the
    expressions in ``rows``. Under torch.distributed each rank scores a shard and the sums are
    merged, so every rank returns the same result.
    """
    from fiacli.core.device import autocast
    from fiacli.training.transforms import resize_logits

    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    loader = DataLoader(
        _shard(dataset, rank, world),
        batch_size=1 if full_res else batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_eval_collate,
        worker_init_fn=ignore_terminating_signals,  # SIGTERM is the main process's to handle
    )
    was_training = model.training
    model.eval()
    overall, subset = RefSegMetrics(), RefSegMetrics()
    try:
        for batch in loader:
            image = model.preprocess(batch["image"].to(device))
            with autocast(device, precision):
                logits = model(image, text_for(batch["text_index"], device))
            logits = logits.float()
            groups = [
                metric_groups(d, c, e)
                for d, c, e in zip(
                    batch["dataset"], batch["category"], batch["expression"], strict=True
                )
            ]
            if full_res:
                gts = [m.to(device) for m in batch["mask_full"]]
                preds = [
                    resize_logits(logits[k : k + 1], g.shape[-2:]).argmax(1)[0]
                    for k, g in enumerate(gts)
                ]
            else:
                gts = list(batch["mask"].to(device))
                preds = list(logits.argmax(1))
            flags = [bool(f) for f in batch["position_only"]]
            ious = [
                overall.update(p, g, [grp])[0] for p, g, grp in zip(preds, gts, groups, strict=True)
            ]
            for p, g, flag in zip(preds, gts, flags, strict=True):
                if flag:
                    subset.update(p, g)
            if save_preds is not None:
                _save_predictions(save_preds, batch, preds, gts, ious)
            if on_batch is not None:
                on_batch(len(preds))
    finally:
        model.train(was_training)
    overall.all_reduce()
    subset.all_reduce()
    subsets = {POSITION_ONLY: subset.compute()} if subset.n else {}
    for s in subsets.values():
        s.pop("per_category", None)
    return EvalResult(overall.compute(), subsets)


# ---------------------------------------------------------------------------- predictions


def _save_predictions(
    folder: Path,
    batch: dict[str, Any],
    preds: Sequence[torch.Tensor],
    gts: Sequence[torch.Tensor],
    ious: Sequence[float],
) -> None:
    """``<ref_id>.png`` (prediction, 0/255) and ``<ref_id>_overlay.png`` per sample, plus a
    line in ``predictions.csv``."""
    from PIL import Image

    from fiacli.training.transforms import resize_image

    new_csv = not (folder / "predictions.csv").exists()
    with open(folder / "predictions.csv", "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new_csv:
            writer.writerow(["ref_id", "image_id", "iou", "expression"])
        for k, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
            name = _safe_name(str(batch["ref_id"][k]))
            p = pred.cpu().numpy().astype(bool)
            Image.fromarray((p * 255).astype(np.uint8)).save(folder / f"{name}.png")
            image = resize_image(batch["image"][k], p.shape).permute(1, 2, 0).numpy()
            overlay = overlay_image(image, p, gt.cpu().numpy().astype(bool))
            Image.fromarray(overlay).save(folder / f"{name}_overlay.png")
            writer.writerow(
                [batch["ref_id"][k], batch["image_id"][k], f"{ious[k]:.4f}", batch["expression"][k]]
            )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "sample"


def overlay_image(image: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """RGB uint8 image with the prediction tinted red and the ground-truth outline in green."""
    out = image.astype(np.float32).copy()
    out[pred] = 0.5 * out[pred] + 0.5 * np.array([230, 40, 40], np.float32)
    inner = gt.copy()
    inner[1:, :] &= gt[:-1, :]
    inner[:-1, :] &= gt[1:, :]
    inner[:, 1:] &= gt[:, :-1]
    inner[:, :-1] &= gt[:, 1:]
    out[gt & ~inner] = (40, 230, 40)
    return out.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- from a checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    data_root: str | Path,
    split: str = "test",
    *,
    device: str = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    full_res: bool = False,
    strip_position: bool = False,
    save_preds: Path | None = None,
    parse_cache: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Load a fiacli checkpoint and score it on one split with the parse settings it records.

    ``strip_position`` removes the spatial phrase from every expression first
    (:func:`fiacli.text.parsing.strip_position`): what the model scores without being told where.
    """
    from fiacli.core.device import resolve_device
    from fiacli.models import load_checkpoint
    from fiacli.models.text_encoder import TextBatch
    from fiacli.text.parsing import ParseSettings, parse_cached, parse_many
    from fiacli.text.parsing import strip_position as strip
    from fiacli.training.data_pipeline import WithText
    from fiacli.training.datasets import open_dataset
    from fiacli.training.transforms import eval_transform

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=dev)
    settings = ParseSettings.from_checkpoint_meta(meta, str(checkpoint))
    label = dataset
    if dataset == "auto":  # name the layout, so RefSegRS gets its per-class-name table
        from fiacli.training.datasets import detect_layout

        dataset = detect_layout(data_root)
        label = f"{Path(data_root).resolve().name} ({dataset} layout)"  # not the dataset
    ds = open_dataset(
        dataset, data_root, split, eval_transform(model.image_size, keep_full_mask=full_res)
    )
    expressions = ds.expressions
    if strip_position:
        expressions = [strip(e, settings) for e in expressions]
    unique = list(dict.fromkeys(expressions))
    if parse_cache is not None:
        parsed = parse_cached(unique, settings, parse_cache)
    else:
        parsed = dict(zip(unique, parse_many(unique, settings), strict=True))
    text = TextBatch.from_parsed(parsed[e] for e in unique)
    row = {e: i for i, e in enumerate(unique)}
    if save_preds is not None:
        save_preds = Path(save_preds)
        if save_preds.exists() and any(save_preds.iterdir()):
            raise FiacliError(f"{save_preds} is not empty; choose a new folder for --save-preds")
        save_preds.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start(len(ds))
    result = evaluate_split(
        model,
        WithText(ds, [row[e] for e in expressions]),
        lambda rows, d: text[rows].to(d),
        device=dev,
        batch_size=batch_size,
        num_workers=num_workers,
        full_res=full_res,
        save_preds=save_preds,
        on_batch=on_batch,
    )
    result.info = {
        "checkpoint": str(checkpoint),
        "dataset": dataset,  # the name (or detected layout) scripts read
        "data": label,  # what the table's title shows
        "split": split,
        "samples": len(ds),
        "resolution": "full" if full_res else f"{model.image_size}x{model.image_size}",
        "parse_mode": settings.mode,
        "strip_position": strip_position,
    }
    return result


# ---------------------------------------------------------------------------- tables


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def overall_table(result: EvalResult, label: str = "FIANet") -> Any:
    """Paper Table I / III layout: Pr@0.5 … Pr@0.9, oIoU, mIoU in percent."""
    from rich.table import Table

    info = result.info
    title = (
        f"{info.get('data', info.get('dataset', ''))} {info.get('split', '')}: "
        f"{result.metrics['n']} samples at "
        f"{info.get('resolution', '')}"
    ).strip()
    table = Table(title=title, title_justify="left")
    table.add_column("Methods")
    for key in PR_KEYS:
        table.add_column(key.replace("pr@", "Pr@"), justify="right")
    table.add_column("oIoU", justify="right")
    table.add_column("mIoU", justify="right")
    rows = [(label, result.metrics)] + [(f"  {k}", v) for k, v in result.subsets.items()]
    for name, m in rows:
        table.add_row(name, *(_pct(m[k]) for k in PR_KEYS), _pct(m["oiou"]), _pct(m["miou"]))
    return table


def category_table(result: EvalResult, label: str = "FIANet") -> Any:
    """Paper Table II / IV layout: mIoU per category and their average."""
    from rich.table import Table

    per = result.metrics.get("per_category", {})
    table = Table(title="mIoU per category", title_justify="left")
    table.add_column("category")
    table.add_column(label, justify="right")
    table.add_column("n", justify="right")
    for name, row in per.items():
        table.add_row(name, _pct(row["miou"]), str(row["n"]))
    if per:
        avg = sum(r["miou"] for r in per.values()) / len(per)
        table.add_row("average", _pct(avg), "", end_section=False, style="bold")
    return table


def to_csv(result: EvalResult) -> str:
    """One CSV: overall and subset rows, then one row per category (percent values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scope", "name", "n", *PR_KEYS, "oiou", "miou"])
    rows = [("overall", "all", result.metrics)] + [
        ("subset", k, v) for k, v in result.subsets.items()
    ]
    for scope, name, m in rows:
        writer.writerow(
            [scope, name, m["n"], *(_pct(m[k]) for k in PR_KEYS), _pct(m["oiou"]), _pct(m["miou"])]
        )
    for name, row in result.metrics.get("per_category", {}).items():
        writer.writerow(["category", name, row["n"], *[""] * len(PR_KEYS), "", _pct(row["miou"])])
    return buf.getvalue()

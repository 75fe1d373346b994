"""Referring-segmentation metrics exactly as published (docs/metrics.md#metrics-as-published).

Per sample: I = |P ∧ G|, U = |P ∨ G|, IoU = I / U, and **IoU = 0 when U = 0**: a sample whose
prediction and ground truth are both empty scores 0, not 1. That is the published definition; the
public datasets never have an empty target, so it only shows on custom data with "nothing there"
refs. Over a set: mIoU = mean of per-sample IoU, oIoU = ΣI / ΣU (0 if ΣU = 0), Pr@X = share of
samples with IoU ≥ X for X in 0.5 … 0.9.

The functions take a prediction and a ground truth of the same shape (numpy or torch, bool or
0/1); they never resize. The paper scores at 480² against the nearest-resized ground truth: use
:func:`fiacli.training.transforms.resize_mask` for that, or score at full resolution after
:func:`fiacli.training.transforms.resize_logits`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fiacli.core.datasets import REFSEGRS
from fiacli.training.datasets import categories_in

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample intersection and union pixel counts (int64 arrays of length B).

    ``pred`` and ``gt``: masks of shape (H, W) or (B, H, W), nonzero = foreground. Torch tensors
    are reduced on their device and only the 2·B counts come back to the CPU.
    """
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(
            f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ"
        )
    if _is_tensor(pred) or _is_tensor(gt):
        import torch

        device = pred.device if _is_tensor(pred) else gt.device
        p = torch.as_tensor(pred, device=device).bool()
        g = torch.as_tensor(gt, device=device).bool()
        p, g = p.reshape(-1, *p.shape[-2:]), g.reshape(-1, *g.shape[-2:])
        i = (p & g).sum(dim=(-2, -1))
        u = (p | g).sum(dim=(-2, -1))
        return i.cpu().numpy().astype(np.int64), u.cpu().numpy().astype(np.int64)
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    p, g = p.reshape(-1, *p.shape[-2:]), g.reshape(-1, *g.shape[-2:])
    return (p & g).sum(axis=(-2, -1)).astype(np.int64), (p | g).sum(axis=(-2, -1)).astype(np.int64)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it here
    return torch is not None and isinstance(x, torch.Tensor)


def iou_from_counts(i: Any, u: Any) -> np.ndarray:
    """I / U per sample, 0 where U = 0 (docs/metrics.md#per-sample-iou)."""
    i, u = np.asarray(i, dtype=np.float64), np.asarray(u, dtype=np.float64)
    return np.divide(i, u, out=np.zeros_like(i), where=u > 0)


def sample_iou(pred: Any, gt: Any) -> np.ndarray:
    """Per-sample IoU of (H, W) or (B, H, W) masks."""
    return iou_from_counts(*intersection_union(pred, gt))


def metric_groups(dataset: str, category: str, expression: str) -> list[str]:
    """The per-category rows a sample counts under (docs/metrics.md#per-category-tables).

    RefSegRS: every class name occurring in the sentence (so a sample may count several times,
    or not at all); any other dataset: its category (RRSIS-D's category id, shown by name).
    """
    if dataset == REFSEGRS.name:
        return categories_in(expression, REFSEGRS.classes)
    return [category] if category else []


class RefSegMetrics:
    """Accumulates the metrics over batches; mergeable across processes (all state is sums).

    >>> m = RefSegMetrics()
    >>> m.update(pred, gt, groups=[["vehicle"], ["ship"]])   # doctest: +SKIP
    >>> m.compute()["miou"]                                  # doctest: +SKIP
    """

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sum_i = 0
        self.sum_u = 0
        self.sum_iou = 0.0
        self.hits = [0] * len(self.thresholds)
        self.groups: dict[str, list[float]] = {}  # name -> [sum of IoU, count]

    def update(
        self, pred: Any, gt: Any, groups: Sequence[Iterable[str]] | None = None
    ) -> np.ndarray:
        """Add a batch; ``groups[k]`` names the per-category rows of sample k. Returns its IoUs."""
        i, u = intersection_union(pred, gt)
        ious = iou_from_counts(i, u)
        if groups is not None and len(groups) != len(ious):
            raise ValueError(f"{len(groups)} group lists for {len(ious)} samples")
        self.n += len(ious)
        self.sum_i += int(i.sum())
        self.sum_u += int(u.sum())
        self.sum_iou += float(ious.sum())
        for k, t in enumerate(self.thresholds):
            self.hits[k] += int((ious >= t).sum())
        for names, value in zip(groups or (), ious, strict=False):
            for name in dict.fromkeys(names):  # a class named twice in a sentence counts once
                row = self.groups.setdefault(name, [0.0, 0])
                row[0] += float(value)
                row[1] += 1
        return ious

    def merge(self, other: RefSegMetrics) -> RefSegMetrics:
        """Add another accumulator's sums into this one (e.g. another rank's)."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge metrics with different thresholds")
        self.n += other.n
        self.sum_i += other.sum_i
        self.sum_u += other.sum_u
        self.sum_iou += other.sum_iou
        self.hits = [a + b for a, b in zip(self.hits, other.hits, strict=True)]
        for name, (s, c) in other.groups.items():
            row = self.groups.setdefault(name, [0.0, 0])
            row[0] += s
            row[1] += c
        return self

    def all_reduce(self) -> RefSegMetrics:
        """Sum the state of every torch.distributed rank into this accumulator (all ranks agree).

        Category names may differ between ranks, so the states travel as small Python objects;
        they are merged in rank order, so every rank ends with identical numbers.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state_dict())
        self.reset()
        for state in states:
            self.merge(RefSegMetrics.from_state_dict(state))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds), "n": self.n, "sum_i": self.sum_i,
            "sum_u": self.sum_u, "sum_iou": self.sum_iou, "hits": list(self.hits),
            "groups": {k: list(v) for k, v in self.groups.items()},
        }  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RefSegMetrics:
        m = cls(state["thresholds"])
        m.n, m.sum_i, m.sum_u = int(state["n"]), int(state["sum_i"]), int(state["sum_u"])
        m.sum_iou, m.hits = float(state["sum_iou"]), [int(h) for h in state["hits"]]
        m.groups = {k: [float(v[0]), int(v[1])] for k, v in state["groups"].items()}
        return m

    def compute(self) -> dict[str, Any]:
        """``n``, ``miou``, ``oiou``, ``pr@0.5`` … ``pr@0.9`` (fractions in [0, 1]) and
        ``per_category`` {name: {"miou", "n"}} in name order; all 0 when nothing was added."""
        n = max(self.n, 1)
        out: dict[str, Any] = {
            "n": self.n,
            "miou": self.sum_iou / n,
            "oiou": self.sum_i / self.sum_u if self.sum_u else 0.0,
        }
        for t, h in zip(self.thresholds, self.hits, strict=True):
            out[f"pr@{t:g}"] = h / n
        out["per_category"] = {
            name: {"miou": s / c, "n": c} for name, (s, c) in sorted(self.groups.items())
        }
        return out

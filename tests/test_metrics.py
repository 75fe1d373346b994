"""docs/metrics.md metrics against hand-computed cases, the batch accumulator and its merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiacli.training.metrics import (
    RefSegMetrics,
    intersection_union,
    metric_groups,
    sample_iou,
)


def masks(*rows: str) -> np.ndarray:
    """A bool mask from strings of '.' and '#'."""
    return np.array([[c == "#" for c in r] for r in rows])


P = masks("##..", "##..", "....", "....")
G = masks(".#..", ".##.", "..#.", "....")  # P∧G = 2 pixels, P∨G = 4 + 4 - 2 = 6


def test_hand_computed_iou():
    i, u = intersection_union(P, G)
    assert (i.tolist(), u.tolist()) == ([2], [6])
    assert sample_iou(P, G)[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("pred", "gt", "i", "u"),
    [
        (np.zeros((4, 4), bool), G, 0, 4),  # empty prediction
        (P, np.zeros((4, 4), bool), 0, 4),  # empty ground truth
        (np.zeros((4, 4), bool), np.zeros((4, 4), bool), 0, 0),  # both empty
    ],
)
def test_empty_cases_score_zero(pred, gt, i, u):
    got_i, got_u = intersection_union(pred, gt)
    assert (int(got_i[0]), int(got_u[0])) == (i, u)
    # docs/metrics.md: IoU = I/U, and 0 when U = 0 — so "both empty" is a miss, not a hit
    assert sample_iou(pred, gt)[0] == 0.0


def test_accumulator_hand_computed_totals():
    # samples with (I, U): (2, 6), (3, 3), (0, 4), (0, 0), (7, 10)
    pred = np.zeros((5, 2, 10), bool)
    gt = np.zeros((5, 2, 10), bool)
    pred[0, 0, :4], gt[0, 0, 2:6] = True, True  # I 2, U 6
    pred[1, 1, :3], gt[1, 1, :3] = True, True  # I 3, U 3
    gt[2, 0, :4] = True  # I 0, U 4
    pred[4, 0, :], gt[4, 0, :7] = True, True  # I 7, U 10: IoU exactly 0.7
    m = RefSegMetrics()
    ious = m.update(pred, gt)
    assert ious.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 0.7])
    r = m.compute()
    assert r["n"] == 5
    assert r["miou"] == pytest.approx((1 / 3 + 1 + 0.7) / 5)
    assert r["oiou"] == pytest.approx(12 / 23)  # (2+3+0+0+7) / (6+3+4+0+10)
    assert r["pr@0.5"] == pytest.approx(2 / 5)  # 1.0 and 0.7
    assert r["pr@0.6"] == pytest.approx(2 / 5)
    assert r["pr@0.7"] == pytest.approx(2 / 5)  # IoU ≥ X: 0.7 counts at 0.7
    assert r["pr@0.8"] == pytest.approx(1 / 5)
    assert r["pr@0.9"] == pytest.approx(1 / 5)


def test_empty_accumulator_and_all_empty_union():
    assert RefSegMetrics().compute()["miou"] == 0.0
    m = RefSegMetrics()
    m.update(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool))
    r = m.compute()
    assert (r["miou"], r["oiou"], r["pr@0.5"]) == (0.0, 0.0, 0.0)


def test_torch_and_numpy_agree_and_accept_0_1_integers():
    rng = np.random.default_rng(0)
    pred = rng.random((3, 8, 9)) < 0.5
    gt = rng.random((3, 8, 9)) < 0.4
    a = intersection_union(pred, gt)
    b = intersection_union(torch.from_numpy(pred).long(), torch.from_numpy(gt))
    c = intersection_union(pred.astype(np.uint8), torch.from_numpy(gt))
    for x, y in ((a, b), (a, c)):
        assert x[0].tolist() == y[0].tolist() and x[1].tolist() == y[1].tolist()
    # a plain count as the reference
    assert a[0][0] == sum(1 for p, g in zip(pred[0].ravel(), gt[0].ravel(), strict=True) if p and g)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ"):
        intersection_union(np.zeros((4, 4)), np.zeros((4, 5)))


def test_per_category_groups():
    # RefSegRS: every class name in the sentence; others: the sample's category
    assert metric_groups("refsegrs", "", "the road marking on the road") == ["road", "road marking"]
    assert metric_groups("rrsisd", "vehicle", "the car on the left") == ["vehicle"]
    m = RefSegMetrics()
    pred = np.stack([P, P, np.zeros_like(P)])
    gt = np.stack([G, P, G])  # IoUs 1/3, 1, 0
    m.update(pred, gt, groups=[["road", "road marking"], ["road"], ["tree", "tree"]])
    cat = m.compute()["per_category"]
    assert cat["road"] == {"miou": pytest.approx((1 / 3 + 1) / 2), "n": 2}
    assert cat["road marking"] == {"miou": pytest.approx(1 / 3), "n": 1}
    assert cat["tree"] == {"miou": 0.0, "n": 1}  # named twice, counted once
    assert list(cat) == ["road", "road marking", "tree"]


def test_merge_equals_one_pass_and_state_round_trip():
    rng = np.random.default_rng(1)
    pred = rng.random((6, 5, 5)) < 0.5
    gt = rng.random((6, 5, 5)) < 0.5
    groups = [["a"], ["b"], ["a", "b"], [], ["c"], ["a"]]
    whole = RefSegMetrics()
    whole.update(pred, gt, groups)
    left, right = RefSegMetrics(), RefSegMetrics()
    left.update(pred[:2], gt[:2], groups[:2])
    right.update(pred[2:], gt[2:], groups[2:])
    merged = RefSegMetrics.from_state_dict(left.state_dict()).merge(right)
    got, want = merged.compute(), whole.compute()
    assert got.pop("per_category").keys() == want.pop("per_category").keys() == {"a", "b", "c"}
    assert got == pytest.approx(want)
    for name, (total, count) in whole.groups.items():
        assert merged.groups[name] == [pytest.approx(total), count]
    assert merged.sum_i == whole.sum_i and merged.sum_u == whole.sum_u


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    m = RefSegMetrics()
    # rank 0: one perfect sample of class "a"; rank 1: one miss (I 0, U 4) of class "b"
    full = np.ones((1, 2, 2), bool)
    m.update(full, full if rank == 0 else np.zeros_like(full), [["a"] if rank == 0 else ["b"]])
    m.all_reduce()
    torch.save(m.compute(), f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, init, out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{k}", weights_only=False) for k in range(2))
    assert r0 == r1
    assert r0["n"] == 2 and r0["miou"] == pytest.approx(0.5) and r0["oiou"] == pytest.approx(4 / 8)
    assert r0["per_category"] == {"a": {"miou": 1.0, "n": 1}, "b": {"miou": 0.0, "n": 1}}

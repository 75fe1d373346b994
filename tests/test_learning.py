"""The ≤ 2 minute learning check: fianet-tiny learns on synthetic scenes, position phrases matter.

Runs ``bench/learning_check.py --quick`` (real commands: data synth, train, eval twice). The full
check (≤ 10 minutes of training, mIoU ≥ 0.60) is ``python bench/learning_check.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_check.py"
MIN_MIOU = 0.30  # quick variant; the full check asks 0.60
MIN_GAP = 0.10  # position-only mIoU with the spatial phrase minus without


def test_quick_learning_check(tmp_path):
    spec = importlib.util.spec_from_file_location("learning_check", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.learning_check(tmp_path, quick=True)
    assert figures["test_miou"] >= MIN_MIOU, figures
    gap = figures["position_only_miou"] - figures["position_only_miou_without_phrase"]
    assert gap >= MIN_GAP, figures

"""bench/scale.py runs end to end on small scenes (2 real gloo ranks), so it does not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_scale_bench_prints_its_figures(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--size", "700", "--scenes", "3",
         "--folder", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "assembly / total = " in out.stdout
    assert "balance (busiest / mean seconds)" in out.stdout
    assert "gpu: " in out.stdout  # measured, or said to be not measured

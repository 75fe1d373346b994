"""bench/aoi.py on a small scene: the three runs happen and the figures are reported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(REPO / "bench"))  # bench/aoi.py imports bench/segment.py
    try:
        spec = importlib.util.spec_from_file_location("bench_aoi", REPO / "bench" / "aoi.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_bench_aoi_reports_whole_aois_and_windows(capsys):
    from fiacli.geo.tiling import ChipGrid

    report = _bench().main(["--size", "4000", "--count", "3", "--aoi-m", "600"])
    assert '"aoi"' in capsys.readouterr().out
    # 1,200 px AOIs: more than 2 chips of 480, so each is a scene of its own of 3 x 3 chips
    assert report["aoi_pictures"] == ["scene of its own"]
    assert report["chips"]["aois"] == report["chips"]["windows"] == 3 * 9
    assert report["chips"]["whole"] == len(ChipGrid(4000, 4000, 480, 96))
    assert set(report["seconds"]) == {"whole", "aois", "windows"}
    assert report["whole_over_aois"] > 0 and report["aois_over_windows"] > 0
    assert report["projected_with_model_s"]["whole_over_aois"] > 1


def test_aois_are_placed_apart_inside_the_scene():
    import shapely

    boxes = _bench().place_aois(4000, 8, 300.0)
    assert len(boxes) == 8
    assert not any(a.intersects(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    scene = shapely.box(500000, 4_200_000 - 2000, 500000 + 2000, 4_200_000)
    assert all(scene.contains(b) for b in boxes)

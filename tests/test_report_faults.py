"""``fiacli report`` on damaged run folders: corrupt lines are counted and said, records with
the wrong types are skipped (no traceback), and the report never replaces what it reads."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fiacli.app.report import read_run


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 2\nselect_metric: miou\n")
    good = [
        {"kind": "step", "epoch": 1, "step": 1, "loss": 1.0, "lr": 1e-3},
        {"kind": "epoch", "epoch": 1, "step": 1, "val_miou": 0.5},
        {"kind": "step", "epoch": 2, "step": 2, "loss": 0.5, "lr": 5e-4},
        {"kind": "epoch", "epoch": 2, "step": 2, "val_miou": 0.6},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in good) + "\n")
    preds = run / "preds"
    preds.mkdir()
    (preds / "predictions.csv").write_text("ref_id,image_id,iou,expression\nr0,0,0.5,a ship\n")
    Image.new("RGB", (8, 8)).save(preds / "r0_overlay.png")
    return run


def _append(run, *lines):
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def test_corrupt_lines_are_counted_and_said_once(run_dir, capsys):
    _append(run_dir, "{not json", '"a string"', "[1, 2]", '{"kind": "step", "step": "abc"}',
            '{"kind": "epoch", "epoch": 3, "val_miou": "high"}')  # fmt: skip
    run = read_run(run_dir)
    assert len(run.steps) == 2 and len(run.epochs) == 2 and run.skipped_lines == 5
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {run_dir / 'metrics.jsonl'}: skipped 5 corrupt line(s) (not a JSON "
                   "training record)"]  # fmt: skip


def test_a_live_run_s_last_line_is_not_corruption(run_dir, capsys):
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "step", "ep')  # being written
    assert read_run(run_dir).skipped_lines == 1
    assert capsys.readouterr().err == ""


def test_a_report_with_bad_records_is_written_with_one_warning(run_cli, run_dir):
    _append(run_dir, '{"kind": "step", "epoch": 2, "step": null, "loss": 0.1}')
    result = run_cli("report", str(run_dir), "--no-preds", "-o", str(run_dir / "r.png"))
    assert result.exit_code == 0, result.stderr
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["preds/r0_overlay.png"])
def test_the_report_never_replaces_what_it_reads(run_cli, run_dir, target):
    before = (run_dir / target).read_bytes()
    result = run_cli("report", str(run_dir), "-o", str(run_dir / target), "-f")
    assert result.exit_code == 2 and "is the input" in result.stderr
    assert (run_dir / target).read_bytes() == before

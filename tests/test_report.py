"""``fiacli report``: curves, the metric table and the best/worst predictions of a run folder."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from fiacli.app.report import Prediction, best_and_worst, read_run

EPOCHS = [  # val metrics per epoch; epoch 2 is the best mIoU
    {"val_miou": 0.31, "val_oiou": 0.30, "val_pr@0.5": 0.20},
    {"val_miou": 0.58, "val_oiou": 0.52, "val_pr@0.5": 0.61},
    {"val_miou": 0.55, "val_oiou": 0.54, "val_pr@0.5": 0.57},
]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as fiacli train writes it (config, metrics) plus an eval --save-preds one."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"dataset": "synth", "preset": "fianet-tiny", "epochs": 3, "lr": 0.002, "batch_size": 8,
         "image_size": 96, "select_metric": "miou", "data_root": str(tmp_path / "gone")}
    ))  # fmt: skip
    lines = []
    for e, val in enumerate(EPOCHS, 1):
        for s in range(1, 4):
            step = (e - 1) * 3 + s
            lr = 0.002 * (1 - step / 10)
            lines.append({"kind": "step", "epoch": e, "step": step, "loss": 1 / step, "lr": lr,
                          "it_s": 2.0, "time": 10.0 * step})  # fmt: skip
        full = {f"val_pr@{t}": val["val_pr@0.5"] / 2 for t in ("0.6", "0.7", "0.8", "0.9")}
        lines.append({"kind": "epoch", "epoch": e, "step": e * 3, "val_n": 10, **full, **val})
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"kind": "step", "ep'  # a live run
    (run / "metrics.jsonl").write_text(text)
    preds = run / "preds"
    preds.mkdir()
    with open(preds / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ref_id", "image_id", "iou", "expression"])
        for i, iou in enumerate([0.9, 0.1, 0.5, 0.95, 0.0, 0.7, 0.3, 0.6]):
            writer.writerow([f"r{i}", i, f"{iou:.4f}", f"the ship number {i}"])
            Image.new("RGB", (32, 32), (int(255 * iou), 0, 0)).save(preds / f"r{i}_overlay.png")
    return run


def test_read_run_skips_the_line_being_written(run_dir):
    run = read_run(run_dir)
    assert len(run.steps) == 9 and len(run.epochs) == 3 and run.skipped_lines == 1
    assert run.best_epoch["epoch"] == 2


def test_best_and_worst():
    preds = [Prediction(f"r{i}", iou, "", np.zeros((1, 1, 3))) for i, iou in
             enumerate([0.9, 0.1, 0.5, 0.95, 0.0])]  # fmt: skip
    best, worst = best_and_worst(preds, 2)
    assert [p.ref_id for p in best] == ["r3", "r0"]
    assert [p.ref_id for p in worst] == ["r4", "r1"]
    best, worst = best_and_worst(preds, 10)  # never the same sample in both rows
    assert not {p.ref_id for p in best} & {p.ref_id for p in worst}


def embedded_pngs(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


def test_html_report(run_cli, run_dir):
    r = run_cli("report", str(run_dir), "--examples", "2")
    assert r.exit_code == 0, r.stderr
    page = (run_dir / "report.html").read_text()
    # the metric table, in percent, with the best epoch marked
    best_row = re.search(r"<tr class=best>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", best_row)
    assert cells[0] == "2 (best)" and cells[-2:] == ["52.00", "58.00"]
    images = embedded_pngs(page)
    assert len(images) == 2 and all(im.width > 300 for im in images)  # curves, then the grid
    assert (
        "best r3 (IoU 0.95); best r0 (IoU 0.90); worst r4 (IoU 0.00); worst r1 (IoU 0.10)" in page
    )


def test_png_report(run_cli, run_dir, tmp_path):
    out = tmp_path / "report.png"
    r = run_cli("report", str(run_dir), "-o", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["best"]["epoch"] == 2 and summary["predictions"] == 8
    image = Image.open(out)
    assert image.format == "PNG" and image.height > image.width / 2


def test_without_predictions(run_cli, run_dir, tmp_path):
    (run_dir / "preds" / "predictions.csv").unlink()
    r = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert r.exit_code == 1 and "--preds" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r.html").exists()
    r = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"), "--no-preds")
    assert r.exit_code == 0, r.stderr
    assert len(embedded_pngs((tmp_path / "r.html").read_text())) == 1


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [(["nowhere"], "run folder not found", 1),
     (["{tmp}"], "not a fiacli run folder", 1),
     (["{run}", "-o", "{tmp}/r.pdf"], ".html or .png", 2),
     (["{run}", "--examples", "0"], "at least 1", 2)],
)  # fmt: skip
def test_bad_input_is_one_line(run_cli, run_dir, tmp_path, args, message, code):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    r = run_cli("report", *argv)
    assert r.exit_code == code and r.stderr.count("error:") == 1
    assert message in " ".join(r.stderr.split())
    assert not (run_dir / "report.html").exists()


def test_existing_report_needs_overwrite(run_cli, run_dir):
    (run_dir / "report.html").write_text("old")
    r = run_cli("report", str(run_dir))
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert (run_dir / "report.html").read_text() == "old"
    assert run_cli("report", str(run_dir), "-f").exit_code == 0
    assert "<html>" in (run_dir / "report.html").read_text()


def test_report_help_has_examples(run_cli):
    r = run_cli("report", "--help")
    assert r.exit_code == 0 and "Examples" in r.stdout and "fiacli report" in r.stdout

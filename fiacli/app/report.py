"""``fiacli report``: one look at a training run, as a self-contained HTML page or one PNG.

Reads what ``fiacli train`` leaves in its run folder (``config.yaml``, ``metrics.jsonl``,
``best.safetensors`` / ``last.safetensors``) and shows the training loss and learning rate per
step, the validation metrics per epoch (curves and a table, best epoch marked) and a grid of the
best and worst validation predictions. The predictions come from an ``fiacli eval --save-preds``
folder when one is given (or ``RUN_DIR/preds`` exists); otherwise they are computed on the run's
validation split with its best checkpoint, which needs the dataset still at ``data_root``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.core.errors import FiacliError, UsageError

REPORT_SUFFIXES = (".html", ".png")
METRIC_KEYS = ("pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9", "oiou", "miou")


@dataclass
class RunLog:
    """The records of one run folder."""

    run_dir: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    skipped_lines: int = 0

    @property
    def select_metric(self) -> str:
        return str(self.config.get("select_metric", "miou"))

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        key = f"val_{self.select_metric}"
        scored = [e for e in self.epochs if isinstance(e.get(key), (int, float))]
        return max(scored, key=lambda e: e[key]) if scored else None

    @property
    def checkpoint(self) -> Path | None:
        for name in ("best.safetensors", "last.safetensors"):
            if (self.run_dir / name).is_file():
                return self.run_dir / name
        return None


@dataclass
class Prediction:
    """One validation sample as ``fiacli eval --save-preds`` writes it."""

    ref_id: str
    iou: float
    expression: str
    overlay: np.ndarray  # H×W×3 uint8: prediction tinted red, ground truth outlined in green


@dataclass
class Report:
    run: RunLog
    predictions: list[Prediction] = field(default_factory=list)
    predictions_source: str = ""
    examples: int = 6


def read_run(run_dir: str | os.PathLike[str]) -> RunLog:
    """Config and metrics of a run folder; a line being written (a live run) is skipped."""
    import yaml

    folder = Path(run_dir)
    if not folder.is_dir():
        raise FiacliError(f"run folder not found: {folder}")
    log = folder / "metrics.jsonl"
    if not log.is_file():
        raise FiacliError(f"{folder} is not a fiacli run folder (no metrics.jsonl)")
    config: dict[str, Any] = {}
    if (folder / "config.yaml").is_file():
        try:
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise FiacliError(f"{folder / 'config.yaml'} is not valid YAML: {exc}") from None
    steps, epochs, skipped, corrupt = [], [], 0, 0
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    live = bool(lines) and not text.endswith("\n")  # a live run is writing the last line
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            skipped += 1
            corrupt += not (live and i == len(lines) - 1)
        elif record["kind"] == "step":
            steps.append(record)
        elif record["kind"] == "epoch":
            epochs.append(record)
    if corrupt:
        from fiacli.core.console import warn

        warn(f"{log}: skipped {corrupt} corrupt line(s) (not a JSON training record)")
    if not steps and not epochs:
        raise FiacliError(f"{log} holds no training records yet")
    return RunLog(folder, config if isinstance(config, dict) else {}, steps, epochs, skipped)


def _record(line: str) -> dict[str, Any] | None:
    """A step or epoch record with numbers where the report needs them, else None; records of
    other kinds are kept (and ignored) as the trainer may add some."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    key = {"step": "step", "epoch": "epoch"}.get(record["kind"])
    if key is None:
        return record
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    numeric = ("loss", "lr", "time", *(f"val_{k}" for k in METRIC_KEYS))
    if any(k in record and not _number(record[k]) for k in numeric):
        return None
    return record


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


# --------------------------------------------------------------------------- predictions


def read_predictions(folder: str | os.PathLike[str]) -> list[Prediction]:
    """The samples of an ``fiacli eval --save-preds`` folder, with their overlay images."""
    from PIL import Image

    folder = Path(folder)
    table = folder / "predictions.csv"
    if not table.is_file():
        raise FiacliError(f"{folder} holds no predictions.csv (write it with eval --save-preds)")
    out = []
    with open(table, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["ref_id"])
            png = folder / f"{name}_overlay.png"
            if not png.is_file():
                continue
            overlay = np.asarray(Image.open(png).convert("RGB"))
            out.append(Prediction(row["ref_id"], float(row["iou"]), row["expression"], overlay))
    return out


def compute_predictions(run: RunLog, *, device: str = "auto") -> list[Prediction]:
    """Evaluate the run's checkpoint on its validation split and keep every overlay."""
    from fiacli.training.evaluate import evaluate_checkpoint

    remedy = "pass --preds FOLDER (from fiacli eval --save-preds) or --no-preds"
    checkpoint = run.checkpoint
    if checkpoint is None:
        raise FiacliError(
            f"cannot compute predictions: {run.run_dir} holds no checkpoint; {remedy}"
        )
    root = run.config.get("data_root")
    if not root or not Path(root).is_dir():
        raise FiacliError(
            f"cannot compute predictions: the run's dataset ({root or 'unknown'}) is not there; "
            f"{remedy}"
        )
    with tempfile.TemporaryDirectory(prefix="fiacli-report-") as tmp:
        evaluate_checkpoint(
            checkpoint, str(run.config.get("dataset", "auto")), root,
            str(run.config.get("val_split") or "val"), device=device, save_preds=Path(tmp) / "p",
        )  # fmt: skip
        return read_predictions(Path(tmp) / "p")


# --------------------------------------------------------------------------- figures


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_figure(run: RunLog) -> Any:
    """Training loss (and learning rate) per step; validation metrics per epoch."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.4))
    if run.steps:
        steps = [r["step"] for r in run.steps]
        ax_loss.plot(steps, [r.get("loss") for r in run.steps], color="tab:blue", lw=1.4)
        ax_loss.set_yscale("log")
        lr = [r.get("lr") for r in run.steps]
        if all(isinstance(v, (int, float)) for v in lr):
            ax_lr = ax_loss.twinx()
            ax_lr.plot(steps, lr, color="tab:gray", lw=1, ls="--")
            ax_lr.set_ylabel("learning rate (dashed)", color="tab:gray")
            ax_lr.tick_params(axis="y", colors="tab:gray", labelsize=8)
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss (log)")
    ax_loss.grid(alpha=0.3)
    epochs = [e for e in run.epochs if "val_miou" in e]
    if epochs:
        x = [e["epoch"] for e in epochs]
        for key, color in (("val_miou", "tab:red"), ("val_oiou", "tab:orange"),
                           ("val_pr@0.5", "tab:green")):  # fmt: skip
            ax_val.plot(x, [e.get(key) for e in epochs], marker="o", ms=3, color=color,
                        label=key[4:].replace("miou", "mIoU").replace("oiou", "oIoU"))  # fmt: skip
        best = run.best_epoch
        if best is not None:
            ax_val.axvline(best["epoch"], color="k", lw=0.8, ls=":", label="best")
        ax_val.set_ylim(0, 1)
        ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_val.legend(loc="best", fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center")
    ax_val.set(title="validation", xlabel="epoch")
    ax_val.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def best_and_worst(
    predictions: list[Prediction], k: int
) -> tuple[list[Prediction], list[Prediction]]:
    """The ``k`` highest-IoU samples (best first) and the ``k`` lowest (worst first), without
    showing a sample twice when there are fewer than ``2k``."""
    ranked = sorted(predictions, key=lambda p: (-p.iou, p.ref_id))
    k = max(1, min(k, len(ranked) // 2)) if len(ranked) > 1 else len(ranked)
    return ranked[:k], ranked[::-1][:k] if len(ranked) > 1 else []


def grid_figure(predictions: list[Prediction], k: int = 6) -> Any:
    """The ``k`` best and ``k`` worst predictions by IoU, with their expressions."""
    import textwrap

    import matplotlib.pyplot as plt

    best, worst = best_and_worst(predictions, k)
    rows = [("best", best), ("worst", worst)]
    k = len(best)
    fig, axes = plt.subplots(2, k, figsize=(1.9 * k, 2 * 2.5), squeeze=False, layout="constrained")
    for r, (label, items) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            p = items[c]
            ax.imshow(p.overlay, interpolation="nearest")
            caption = textwrap.fill(p.expression, 26, max_lines=2, placeholder=" …")
            ax.set_title(f"{label} · IoU {p.iou:.2f}\n{caption}", fontsize=7)
    fig.suptitle("validation predictions (red: prediction, green: ground-truth outline)",
                 fontsize=9)  # fmt: skip
    return fig


# --------------------------------------------------------------------------- the report


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "–"


def metric_rows(run: RunLog) -> list[list[str]]:
    """Per-epoch validation metrics in percent, as the paper's tables print them."""
    best = run.best_epoch
    rows = []
    for e in run.epochs:
        mark = " (best)" if best is not None and e is best else ""
        rows.append([f"{e['epoch']}{mark}", str(e.get("step", "")),
                     *(_pct(e.get(f"val_{k}")) for k in METRIC_KEYS)])  # fmt: skip
    return rows


def summary(run: RunLog) -> dict[str, Any]:
    """The few facts a reader wants first."""
    cfg = run.config
    best = run.best_epoch
    last_step = run.steps[-1] if run.steps else {}
    return {
        "run": str(run.run_dir),
        "dataset": cfg.get("dataset"),
        "model": cfg.get("preset"),
        "image size": cfg.get("image_size"),
        "epochs": f"{len(run.epochs)} of {cfg.get('epochs', '?')}",
        "steps": last_step.get("step"),
        "batch × accum": f"{cfg.get('batch_size', '?')} × {cfg.get('grad_accum', 1)}",
        "lr": cfg.get("lr"),
        "training time": f"{last_step['time'] / 60:.1f} min" if "time" in last_step else None,
        f"best val {run.select_metric}": _pct(best.get(f"val_{run.select_metric}"))
        if best
        else None,
        "best epoch": best["epoch"] if best else None,
    }


HEADERS = ["epoch", "step", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU"]


def _html(report: Report, curves: bytes, grid: bytes | None) -> str:
    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    facts = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary(report.run).items()
        if v is not None
    )
    head = "".join(f"<th>{h}</th>" for h in HEADERS)
    body = "".join(
        f"<tr{' class=best' if '(best)' in r[0] else ''}>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in r)
        + "</tr>"
        for r in metric_rows(report.run)
    )
    preds = "<p>No prediction grid (no predictions available).</p>"
    if grid:
        best, worst = best_and_worst(report.predictions, report.examples)
        shown = "; ".join(
            f"{label} {html.escape(p.ref_id)} (IoU {p.iou:.2f})"
            for label, items in (("best", best), ("worst", worst))
            for p in items
        )
        preds = (
            f"<h2>Best and worst predictions</h2><p>{html.escape(report.predictions_source)}, "
            f"{len(report.predictions)} samples</p>{img(grid, 'predictions')}"
            f"<p class=shown>{shown}</p>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fiacli run {html.escape(str(report.run.run_dir))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;
text-align:right}}th{{background:#f3f3f3}}tr.best td{{font-weight:bold;background:#fff6d6}}
img{{max-width:100%}}</style></head><body>
<h1>Training run {html.escape(str(report.run.run_dir))}</h1>
<table>{facts}</table>
<h2>Curves</h2>{img(curves, "curves")}
<h2>Validation metrics per epoch (%)</h2><table><tr>{head}</tr>{body}</table>
{preds}
</body></html>
"""


def _png(report: Report, curves: bytes, grid: bytes | None) -> bytes:
    """One PNG: summary and metric table on top, curves, then the prediction grid."""
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = metric_rows(report.run)
    if len(rows) > 12:  # keep the table readable: the first, the best, every n-th and the last
        keep = {0, len(rows) - 1, *range(0, len(rows), len(rows) // 8 + 1)}
        keep |= {i for i, r in enumerate(rows) if "(best)" in r[0]}
        rows = [r for i, r in enumerate(rows) if i in keep]
    facts = " · ".join(f"{k} {v}" for k, v in summary(report.run).items() if v is not None and
                       k != "run")  # fmt: skip
    fig = plt.figure(figsize=(10, 0.6 + 0.22 * (len(rows) + 1)))
    fig.text(0.01, 0.98, f"training run {report.run.run_dir}", fontsize=12, weight="bold",
             va="top")  # fmt: skip
    fig.text(0.01, 0.98 - 0.3 / fig.get_figheight(), facts, fontsize=8, va="top", wrap=True)
    if rows:
        ax = fig.add_axes((0.01, 0.0, 0.98, 1 - 0.6 / fig.get_figheight()))
        ax.axis("off")
        table = ax.table(cellText=rows, colLabels=HEADERS, loc="upper center", cellLoc="right")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        for (r, _), cell in table.get_celld().items():
            if r > 0 and "(best)" in rows[r - 1][0]:
                cell.set_text_props(weight="bold")
                cell.set_facecolor("#fff6d6")
    parts = [Image.open(io.BytesIO(_figure_png(fig))), Image.open(io.BytesIO(curves))]
    if grid:
        parts.append(Image.open(io.BytesIO(grid)))
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for p in parts:
        canvas.paste(p.convert("RGB"), ((width - p.width) // 2, y))
        y += p.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


RUN_INPUTS = ("config.yaml", "metrics.jsonl", "*.safetensors", "*.pt")
PREDS_INPUTS = ("predictions.csv", "*.png")


def _files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """What a report reads in ``folder``: the files matching ``patterns`` (none if absent)."""
    try:
        return [p for pattern in patterns for p in folder.glob(pattern) if p.is_file()]
    except OSError:
        return []


def write_report(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    preds: str | os.PathLike[str] | None = None,
    compute: bool = True,
    examples: int = 6,
    device: str = "auto",
    overwrite: bool = False,
) -> tuple[Path, Report]:
    """Write the report of ``run_dir`` (``.html`` or ``.png`` by extension; default
    ``RUN_DIR/report.html``). ``preds``: an ``eval --save-preds`` folder; ``compute=False``
    leaves the grid out when no such folder exists."""
    from fiacli.core.io import atomic_output, check_output_path, refuse_overwriting_inputs

    target = Path(output) if output is not None else Path(run_dir) / "report.html"
    if target.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"the report is .html or .png, not {target.name}")
    if examples < 1:
        raise UsageError(f"--examples must be at least 1, got {examples}")
    run = read_run(run_dir)
    folder = Path(preds) if preds is not None else run.run_dir / "preds"
    inputs = [*_files(run.run_dir, RUN_INPUTS), *_files(folder, PREDS_INPUTS)]
    refuse_overwriting_inputs([target], inputs)
    check_output_path(target, overwrite=overwrite)
    try:
        import matplotlib
    except ImportError:
        raise FiacliError("fiacli report draws with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, never a window
    report = Report(run, examples=examples)
    if preds is not None or (folder / "predictions.csv").is_file():
        report.predictions = read_predictions(folder)
        report.predictions_source = f"from {folder}"
    elif compute:
        report.predictions = compute_predictions(run, device=device)
        split = run.config.get("val_split") or "val"
        name = run.checkpoint.name if run.checkpoint else "?"
        report.predictions_source = f"computed with {name} on the {split} split"
    curves = _figure_png(curves_figure(run))
    grid = _figure_png(grid_figure(report.predictions, examples)) if report.predictions else None
    with atomic_output(target, overwrite=overwrite) as tmp:
        if target.suffix.lower() == ".html":
            tmp.write_text(_html(report, curves, grid), encoding="utf-8")
        else:
            tmp.write_bytes(_png(report, curves, grid))
    return target, report

"""`fiacli eval` (docs/metrics.md): the evaluation loop, tables, JSON/CSV, saved predictions."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from torch import nn
from train_helpers import make_synth, tiny_config

from fiacli.training.evaluate import evaluate_split, overlay_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Oracle(nn.Module):
    """Predicts the object where the image's red channel is 255: predictions set by the test."""

    def preprocess(self, image):
        return image.float()

    def forward(self, image, text):
        x = image[:, 0] / 255.0 * 2 - 1  # +1 object, -1 background
        return torch.stack([-x, x], dim=1)


def _sample(pred, gt, *, expression, category="", dataset="rrsisd", position_only=False, idx=0):
    pred, gt = np.array(pred, bool), np.array(gt, bool)
    image = np.zeros((3, *pred.shape), np.uint8)
    image[0][pred] = 255
    return {
        "image": torch.from_numpy(image), "mask": torch.from_numpy(gt), "expression": expression,
        "category": category, "dataset": dataset, "position_only": position_only,
        "text_index": 0, "ref_id": str(idx), "image_id": str(idx),
    }  # fmt: skip


Z = [[0] * 4] * 4
LEFT = [[1, 1, 0, 0]] * 4  # 8 px
TOP_LEFT = [[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4, [0] * 4]  # 4 px


def _evaluate(samples, **kwargs):
    return evaluate_split(
        _Oracle(), samples, lambda rows, d: None, device=torch.device("cpu"), batch_size=2,
        **kwargs,
    )  # fmt: skip


def test_metrics_match_hand_computed_values():
    samples = [
        # I = 4, U = 8 -> 0.5
        _sample(LEFT, TOP_LEFT, expression="the ship on the left", category="ship", idx=0),
        # exact -> 1.0
        _sample(TOP_LEFT, TOP_LEFT, expression="the ship", category="ship", idx=1),
        # empty prediction of a 4 px target: I = 0, U = 4 -> 0
        _sample(Z, TOP_LEFT, expression="the dam", category="dam", idx=2),
        # both empty: U = 0 -> IoU 0 by the published definition
        _sample(Z, Z, expression="the dam below", category="dam", position_only=True, idx=3),
    ]
    result = _evaluate(samples)
    m = result.metrics
    assert m["n"] == 4
    assert m["miou"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert m["oiou"] == pytest.approx((4 + 4 + 0 + 0) / (8 + 4 + 4 + 0))
    assert m["pr@0.5"] == pytest.approx(2 / 4) and m["pr@0.6"] == pytest.approx(1 / 4)
    assert m["pr@0.9"] == pytest.approx(1 / 4)
    assert m["per_category"] == {
        "dam": {"miou": 0.0, "n": 2},
        "ship": {"miou": pytest.approx(0.75), "n": 2},
    }
    assert result.subsets["position-only"]["n"] == 1
    assert result.subsets["position-only"]["miou"] == 0.0


def test_refsegrs_groups_by_every_class_name_in_the_sentence():
    samples = [
        _sample(LEFT, LEFT, expression="the road next to the building", dataset="refsegrs"),
        _sample(Z, LEFT, expression="the car on the road", dataset="refsegrs", idx=1),
    ]
    per = _evaluate(samples).metrics["per_category"]
    assert per["road"] == {"miou": 0.5, "n": 2}
    assert per["building"] == {"miou": 1.0, "n": 1} and per["car"] == {"miou": 0.0, "n": 1}


def test_full_res_scores_upsampled_logits_against_the_original_mask():
    s = _sample(LEFT, LEFT, expression="the ship")
    # 8×8 original: the 4-px left half upsampled (bilinear, align_corners) covers columns 0-3
    full = np.zeros((8, 8), bool)
    full[:, :3] = True  # ground truth: 3 columns -> I = 24, U = 32
    s["mask_full"] = torch.from_numpy(full)
    result = _evaluate([s], full_res=True)
    assert result.metrics["miou"] == pytest.approx(24 / 32)
    at_input = _evaluate([_sample(LEFT, LEFT, expression="the ship")])
    assert at_input.metrics["miou"] == 1.0


def test_overlay_tints_prediction_and_outlines_ground_truth():
    image = np.full((5, 5, 3), 100, np.uint8)
    pred = np.zeros((5, 5), bool)
    pred[0, 0] = True
    gt = np.zeros((5, 5), bool)
    gt[1:4, 1:4] = True
    out = overlay_image(image, pred, gt)
    assert tuple(out[0, 0]) == (165, 70, 70)  # half red
    assert tuple(out[1, 1]) == (40, 230, 40)  # outline
    assert tuple(out[2, 2]) == (100, 100, 100)  # inside the target, not predicted
    assert tuple(out[4, 4]) == (100, 100, 100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from fiacli.training.loop import train

    root = tmp_path_factory.mktemp("eval")
    data = make_synth(root / "data")
    train(tiny_config(data, root / "run", epochs=1))
    return data, root / "run" / "last.safetensors"


def test_eval_cli_tables_json_csv(trained, run_cli):
    data, ckpt = trained
    base = ["eval", "--model", str(ckpt), "--dataset", "synth", "--data-root", str(data)]
    table = run_cli(*base)
    assert table.exit_code == 0, table.stderr
    for text in ("Pr@0.5", "Pr@0.9", "oIoU", "mIoU", "mIoU per category", "average"):
        assert text in table.stdout
    js = run_cli(*base, "--json")
    payload = json.loads(js.stdout)
    assert payload["split"] == "test" and payload["metrics"]["n"] == 8
    assert payload["parse_mode"] == "fiacli" and payload["resolution"] == "32x32"
    assert set(payload["metrics"]) >= {"miou", "oiou", "pr@0.5", "pr@0.9", "per_category"}
    rows = list(csv.DictReader(io.StringIO(run_cli(*base, "--csv").stdout)))
    assert rows[0]["scope"] == "overall" and int(rows[0]["n"]) == 8
    assert float(rows[0]["miou"]) == pytest.approx(100 * payload["metrics"]["miou"], abs=0.01)
    assert any(r["scope"] == "category" for r in rows)


def test_eval_save_preds_and_strip_position(trained, run_cli, tmp_path):
    data, ckpt = trained
    out = tmp_path / "preds"
    result = run_cli("eval", "--model", str(ckpt), "--dataset", "synth", "--data-root", str(data),
                     "--save-preds", str(out), "--strip-position", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["strip_position"] is True
    lines = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(lines) == 8
    from PIL import Image

    for line in lines:
        assert Image.open(out / f"{line['ref_id']}.png").size == (32, 32)
        assert Image.open(out / f"{line['ref_id']}_overlay.png").mode == "RGB"
    again = run_cli("eval", "--model", str(ckpt), "--dataset", "synth", "--data-root", str(data),
                    "--save-preds", str(out))  # fmt: skip
    assert again.exit_code == 1 and "not empty" in again.stderr


def test_eval_bad_input(trained, run_cli, tmp_path):
    data, ckpt = trained
    missing = run_cli("eval", "--model", str(tmp_path / "x.safetensors"), "--data-root", str(data))
    assert missing.exit_code == 1 and "checkpoint not found" in missing.stderr
    both = run_cli("eval", "--model", str(ckpt), "--data-root", str(data), "--json", "--csv")
    assert both.exit_code == 2
    nodata = run_cli("eval", "--model", str(ckpt), "--data-root", str(tmp_path / "none"))
    assert nodata.exit_code == 1 and "not found" in nodata.stderr
    split = run_cli("eval", "--model", str(ckpt), "--data-root", str(data), "--split", "dev")
    assert split.exit_code == 2 and "dev" in split.stderr  # a usage error (#13)


def test_eval_reads_parse_settings_with_the_shared_reader(tmp_path):
    """A checkpoint without parse settings is refused by ParseSettings.from_checkpoint_meta, as
    the predictor refuses it, before any data is read."""
    from fiacli.core.errors import FiacliError
    from fiacli.models import FIANet, minimal_config, save_checkpoint
    from fiacli.training.evaluate import evaluate_checkpoint

    path = save_checkpoint(tmp_path / "bare.safetensors", FIANet(minimal_config()), {})
    with pytest.raises(FiacliError, match=r"bare\.safetensors records no parse settings"):
        evaluate_checkpoint(path, "auto", tmp_path / "no-data", "test", device="cpu")

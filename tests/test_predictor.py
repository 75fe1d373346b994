"""RefSegPredictor: checkpoint in, expression encoded once, chips → foreground probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fiacli.app.predictor import RefSegPredictor
from fiacli.core.errors import FiacliError
from fiacli.models import FIANet, TextBatch, minimal_config, save_checkpoint

parsing = pytest.importorskip("fiacli.text.parsing")

EXPRESSION = "the white van on the left of the road"


@pytest.fixture(scope="module")
def settings():
    return parsing.ParseSettings.for_dataset("refsegrs", mode="fiacli")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, settings) -> Path:
    torch.manual_seed(0)
    model = FIANet(minimal_config().replace(image_size=64))
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    return save_checkpoint(path, model, {"parse": settings.to_dict()})


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> RefSegPredictor:
    return RefSegPredictor.from_checkpoint(checkpoint, device="cpu")


def _chips(n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_encode_parses_with_checkpoint_settings(predictor: RefSegPredictor, settings) -> None:
    encoded = predictor.encode(EXPRESSION)
    expected = parsing.parse(EXPRESSION, settings)
    assert encoded.parsed.input_ids == expected.input_ids
    assert encoded.parsed.object_mask == expected.object_mask
    assert encoded.features.context.shape == (1, settings.token_length, 32)
    assert predictor.image_size == 64


def test_predict_returns_softmax_foreground(predictor: RefSegPredictor) -> None:
    chips = _chips()
    encoded = predictor.encode(EXPRESSION)
    probs = predictor.predict(chips, encoded)
    assert probs.shape == (3, 64, 64) and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1
    model = predictor.model
    with torch.no_grad():
        image = model.preprocess(torch.from_numpy(chips))
        logits = model(image, TextBatch.from_parsed([encoded.parsed] * 3))
    np.testing.assert_allclose(probs, logits.softmax(1)[:, 1].numpy(), atol=1e-5)
    # chips of another size work too (the network pads internally)
    assert predictor.predict(_chips(1, 48), encoded).shape == (1, 48, 48)
    assert predictor.predict(_chips(0), encoded).shape == (0, 64, 64)


def test_drop_position_removes_the_spatial_phrase(predictor: RefSegPredictor, settings) -> None:
    plain = predictor.encode("the ship on the left")
    dropped = predictor.encode("the ship on the left", drop_position=True)
    assert dropped.parsed.text == parsing.strip_position("the ship on the left", settings)
    assert dropped.parsed.input_ids != plain.parsed.input_ids


def test_rejects_bad_chips(predictor: RefSegPredictor) -> None:
    encoded = predictor.encode(EXPRESSION)
    with pytest.raises(FiacliError, match="uint8"):
        predictor.predict(_chips().astype(np.float32), encoded)
    with pytest.raises(FiacliError, match="B, 3, H, W"):
        predictor.predict(_chips()[:, :1], encoded)


def test_precision_checked_and_missing_parse_settings(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(FiacliError, match="fp16 needs a CUDA"):
        RefSegPredictor.from_checkpoint(checkpoint, device="cpu", precision="fp16")
    model = FIANet(minimal_config())
    bare = save_checkpoint(tmp_path / "bare.safetensors", model)
    with pytest.raises(FiacliError, match="no parse settings"):
        RefSegPredictor.from_checkpoint(bare, device="cpu").encode(EXPRESSION)


@pytest.mark.slow
def test_bf16_autocast_stays_close_to_fp32(checkpoint: Path, predictor: RefSegPredictor) -> None:
    bf16 = RefSegPredictor.from_checkpoint(checkpoint, device="cpu", precision="bf16")
    chips = _chips(1)
    a = bf16.predict(chips, bf16.encode(EXPRESSION))
    b = predictor.predict(chips, predictor.encode(EXPRESSION))
    assert a.dtype == np.float32 and np.abs(a - b).mean() < 0.05

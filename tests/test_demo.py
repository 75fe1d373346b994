"""The bundled demo: a scene that really tiles, a small model that rebuilds from its recorded
recipe, ``segment --demo``, and the quick start's preview showing the vehicle where it is."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import rasterio
from _oracle import Oracle, random_rgb, write_tif
from conftest import REPO
from PIL import Image

import fiacli.app.demo
import fiacli.app.pipeline
from fiacli.app.demo import (
    DEMO_EXPRESSION,
    DEMO_MODEL_FILE,
    demo_model_path,
    demo_scene_path,
    demo_truth,
)

MB = 2**20


def test_demo_scene_is_a_real_georeferenced_scene():
    path = demo_scene_path()
    assert path.stat().st_size <= 2 * MB
    with rasterio.open(path) as ds:
        assert min(ds.width, ds.height) >= 2000 and ds.count == 3 and ds.dtypes[0] == "uint8"
        assert ds.crs.to_epsg() == 32633 and ds.res == (0.5, 0.5)
        assert ds.overviews(1) and ds.block_shapes[0] == (512, 512)
        assert ds.compression.name == "jpeg"


def test_the_scene_is_what_the_generator_draws():
    """The committed file is reproducible from the seeded generator (up to JPEG loss)."""
    truth = demo_truth()
    spec = fiacli.app.demo.default_spec()
    spec.frame, spec.parcel, spec.seed = truth["frame"], truth["parcel"], truth["seed"]
    image, labels = fiacli.app.demo.render_demo_scene(spec)
    with rasterio.open(demo_scene_path()) as ds:
        stored = ds.read().transpose(1, 2, 0)

    def blocks(a: np.ndarray, k: int = 8) -> np.ndarray:  # JPEG keeps 8x8 block means
        return a.reshape(a.shape[0] // k, k, a.shape[1] // k, k, 3).astype(float).mean((1, 3))

    assert np.abs(blocks(stored) - blocks(image)).mean() < 1.0
    for obj in truth["objects"]:
        assert int((labels == obj["index"] + 1).sum()) == obj["pixels"] > 0


def test_the_demo_expression_names_one_object():
    truth = demo_truth()
    (target,) = truth["expressions"][DEMO_EXPRESSION]
    obj = truth["objects"][target]
    assert truth["demo_expression"] == DEMO_EXPRESSION
    assert f"the {obj['color']} {obj['cls']}" == DEMO_EXPRESSION
    same_class = [o for o in truth["objects"] if o["cls"] == obj["cls"]]
    assert len(same_class) > 1  # the colour word is needed to pick it


def test_the_bundled_model_is_small_and_leaves_the_text_encoder_out():
    from safetensors import safe_open

    from fiacli.models import read_checkpoint_meta

    path = demo_model_path()
    assert path.stat().st_size <= 12 * MB
    meta = read_checkpoint_meta(path)
    assert meta["text_encoder"]["stored"] is False
    with safe_open(str(path), framework="np") as f:
        keys = list(f.keys())
        assert not any(k.startswith("text_encoder.") for k in keys)
        floats = {str(f.get_slice(k).get_dtype()) for k in keys} - {"I64", "BOOL"}
    assert floats == {"F16"}
    # the commands that trained it are the ones examples/train_demo_model.sh runs
    script = (REPO / "examples" / "train_demo_model.sh").read_text()
    for line in meta["provenance"]["recipe"]:
        words = shlex.split(line)
        assert words[:3] in (["fiacli", "data", "synth"], ["fiacli", "train", "--config"])
        flags = [w for w in words if w.startswith("--") and w not in ("--data-root",)]
        assert all(f in script for f in flags)


@pytest.mark.slow  # builds fianet-tiny twice (with the offline MiniLM)
def test_the_bundled_model_rebuilds_from_its_recorded_recipe():
    from fiacli.models import load_checkpoint
    from fiacli.training.data_pipeline import build_model
    from fiacli.training.recipe import RUNTIME_KEYS, resolve_config, with_legacy_defaults

    model, meta = load_checkpoint(demo_model_path())
    recorded = with_legacy_defaults(meta["provenance"]["config"])  # trained by fiacli 0.1.0
    recipe = resolve_config(
        config_file=REPO / "examples" / "demo_model.yaml",
        overrides={k: recorded[k] for k in ("data_root", "output")},
    )
    fixed = {k: v for k, v in recipe.to_dict().items() if k not in RUNTIME_KEYS}
    assert fixed == {k: v for k, v in recorded.items() if k not in RUNTIME_KEYS}
    rebuilt = build_model(recipe)
    assert rebuilt.config.to_dict() == model.config.to_dict()
    rebuilt.load_state_dict(model.state_dict())  # strict: same tensors, same shapes


# --------------------------------------------------------------------------- segment --demo


@pytest.fixture
def oracle(monkeypatch, tmp_path):
    """A stand-in demo model and a small stand-in demo scene, so --demo runs in milliseconds."""
    model = Oracle()
    monkeypatch.setattr(fiacli.app.pipeline, "load_predictor", lambda *a, **k: model)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / DEMO_MODEL_FILE).write_bytes(b"stand-in")
    write_tif(assets / fiacli.app.demo.DEMO_SCENE_FILE, random_rgb(80, 100))
    monkeypatch.setattr(fiacli.app.demo, "ASSETS", assets)
    return model


def test_demo_flag_uses_the_bundled_scene_and_expression(run_cli, oracle, tmp_path):
    r = run_cli("segment", "--demo", "-o", str(tmp_path / "d.gpkg"), "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["scene"]["path"] == str(tmp_path / "assets" / fiacli.app.demo.DEMO_SCENE_FILE)
    assert summary["expressions"] == [DEMO_EXPRESSION]
    r = run_cli("segment", "--demo", "the red one", "the blue one", "-o", str(tmp_path / "e.tif"))
    assert r.exit_code == 0, r.stderr
    assert [c[0] for c in oracle.encode_calls[-2:]] == ["the red one", "the blue one"]


@pytest.mark.parametrize("words", [[], ["the red one", "the blue one"]])
def test_demo_under_torchrun_is_one_job_shared_by_the_ranks(run_cli, oracle, tmp_path,
                                                            monkeypatch, words):  # fmt: skip
    """Each rank used to run the demo on its own, racing for the same outputs."""
    import fiacli.cli.segment

    calls = []

    def batch_run(scenes, texts, params, batch, areas):
        calls.append((scenes, texts))

    monkeypatch.setattr(fiacli.cli.segment, "_segment_batch", batch_run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run_cli("segment", "--demo", *words, "-o", str(tmp_path / "d.gpkg"))
    assert r.exit_code == 0, r.stderr
    scene = str(tmp_path / "assets" / fiacli.app.demo.DEMO_SCENE_FILE)
    assert calls == [([scene], words or [DEMO_EXPRESSION])]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--demo", "scene.tif", "the ship"], "--demo segments the bundled scene"),
     (["the ship"], "no expression given"),
     ([], "no scene given")],
)  # fmt: skip
def test_demo_and_scene_arguments_are_checked(run_cli, oracle, tmp_path, args, message):
    r = run_cli("segment", *args, "-o", str(tmp_path / "o.gpkg"))
    assert r.exit_code in (1, 2) and r.stderr.count("error:") == 1
    assert message in " ".join(r.stderr.split())
    assert not (tmp_path / "o.gpkg").exists()


def test_a_missing_bundled_model_is_one_clear_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(fiacli.app.demo, "ASSETS", tmp_path)
    scene = write_tif(tmp_path / "scene.tif", random_rgb(40, 40))
    r = run_cli("segment", str(scene), "red", "-o", str(tmp_path / "o.gpkg"))
    assert r.exit_code == 1 and r.stderr.count("error:") == 1
    assert "bundled model" in r.stderr and "-m" in r.stderr


# --------------------------------------------------------------------------- the quick start


def readme_quick_start() -> list[str]:
    """The README's quick-start lines, as a user copies them."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- quick-start -->")[1].split("<!-- /quick-start -->")[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("```")]


def test_quick_start_is_two_commands_set_up_then_the_job_and_the_tests():
    first, second, *rest = readme_quick_start()
    assert not rest
    assert first.startswith("pip install -e . && fiacli segment --demo ")
    test_command = (REPO / "README.md").read_text(encoding="utf-8").split("<!-- test-command -->")
    test_command = test_command[1].split("```bash")[1].split("```")[0].strip()
    assert second == f'pip install -e ".[dev]" && {test_command}'


@pytest.mark.slow  # the README's first command, for real: 2,048² px through the demo model
def test_quick_start_preview_outlines_the_vehicle_and_nothing_else(run_cli, tmp_path, monkeypatch):
    from fiacli.geo.preview import COLORS, SMALL_PX

    job = shlex.split(readme_quick_start()[0].split("&&", 1)[1])
    assert job[:2] == ["fiacli", "segment"] and "--preview" in job
    monkeypatch.chdir(tmp_path)
    r = run_cli(*job[1:])
    assert r.exit_code == 0, r.stderr
    png = tmp_path / job[job.index("--preview") + 1]
    assert (tmp_path / job[job.index("-o") + 1]).is_file()
    expression = job[job.index("--demo") + 1]
    image = Image.open(png)
    x0, y0, x1, y1 = (int(v) for v in image.text["fiacli:map_box"].split(","))
    view = np.asarray(image.convert("RGB"))[y0:y1, x0:x1]
    outline = (view == np.array(COLORS[0])).all(axis=2)
    truth = demo_truth()
    scale = view.shape[1] / truth["width"]
    (target,) = truth["expressions"][expression]
    bx0, by0, bx1, by1 = (round(v * scale) for v in truth["objects"][target]["bbox_px"])
    pad = SMALL_PX + 6  # the ring drawn around small objects, and its width
    near = np.zeros_like(outline)
    near[max(by0 - pad, 0) : by1 + pad, max(bx0 - pad, 0) : bx1 + pad] = True
    assert (outline & near).sum() >= 20, "the vehicle is not outlined"
    assert not (outline & ~near).any(), "something other than the vehicle is outlined"
    assert image.text["Title"] == expression

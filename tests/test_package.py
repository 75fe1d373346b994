"""The installed package and the CLI skeleton: names, version, exit codes, help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fiacli


def test_models_and_training_live_in_the_fiacli_namespace(tmp_path):
    # Run from an unrelated folder so the repository's own folders cannot shadow the install.
    code = (
        "import importlib.util, fiacli.models, fiacli.training;"
        "find = importlib.util.find_spec;"
        "print(find('models') is None, find('training') is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_version_flag(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fiacli {fiacli.__version__}"


def test_unknown_command_is_a_usage_error(run_cli):
    result = run_cli("no-such-command")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


@pytest.mark.parametrize("command", ["parse", "train", "eval", "segment", "convert", "data"])
def test_every_command_has_help(run_cli, command):
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("argv", [[], ["segment"], ["models"], ["data", "synth"]])
def test_help_shows_no_value_for_flags(run_cli, argv):
    """Typer labels each option with its type; flags take no value, so none is shown for them
    (``--demo <bool>`` invited ``--demo true``), while options with values keep theirs."""
    result = run_cli(*argv, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    if argv == ["segment"]:
        assert "<path>" in result.stdout  # --probabilities PATH still says what it takes


def test_help_imports_no_heavy_library():
    """``fiacli --help`` and every command's ``--help`` print without loading rasterio, scipy,
    GEOS or torch: those load only when a command runs."""
    heavy = ("rasterio", "scipy", "shapely", "geopandas", "numpy", "torch", "transformers", "nltk")
    for argv in (["--help"], ["segment", "--help"], ["train", "-h"]):
        code = (f"import sys; sys.argv = ['fiacli', *{argv!r}]\n"
                "from fiacli.cli import main\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\n"
                f"print('loaded:', *[m for m in {heavy!r} if m in sys.modules])")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "Usage:" in out.stdout, out.stderr
        assert out.stdout.rstrip().splitlines()[-1] == "loaded:", argv


def test_user_error_is_one_line_without_traceback(tmp_path):
    from fiacli.core.errors import FiacliError

    assert issubclass(FiacliError, Exception)
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "fiacli", "parse", ""], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_wheel_holds_every_layer_and_the_bundled_assets(tmp_path):
    """The wheel users get: every subpackage and the demo model and scene (``.ci/run`` also
    installs it into a fresh venv and runs ``fiacli segment --demo`` outside the checkout)."""
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("fiacli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("core", "text", "geo", "models", "training", "app", "cli"):
        assert f"fiacli/{package}/__init__.py" in names, package
    for asset in ("fianet-tiny-demo.safetensors", "demo_scene.tif", "demo_scene.json"):
        assert f"fiacli/assets/{asset}" in names, asset
    assert not any(n.startswith(("models/", "training/", "tests/")) for n in names)

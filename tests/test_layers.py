"""The layers of fiacli, checked with import-linter on the package as it is installed.

models/ and training/ sit at the top of the repository and are installed as ``fiacli.models`` and
``fiacli.training`` (setuptools ``package-dir``), so import-linter reads a copy laid out as the
wheel lays it out. The contracts themselves are in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _stage(root: Path) -> Path:
    """Copy the sources into ``root`` as the installed package lays them out."""
    ignore = shutil.ignore_patterns("__pycache__", "assets")
    shutil.copytree(REPO / "fiacli", root / "fiacli", ignore=ignore)
    shutil.copytree(REPO / "models", root / "fiacli" / "models", ignore=ignore)
    shutil.copytree(REPO / "training", root / "fiacli" / "training", ignore=ignore)
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_import_contracts_are_kept(tmp_path):
    out = _lint(_stage(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "back_import"),
    [
        ("core/io.py", "import fiacli.geo.raster"),  # core below geo
        ("geo/tiling.py", "import fiacli.text.parsing"),  # geo and text are independent
        ("models/fianet.py", "import fiacli.geo.raster"),  # models use only core and text
        ("app/pipeline.py", "import fiacli.cli"),  # nothing imports the CLI
        ("app/demo.py", "import fiacli.app.api"),  # api -> named_models -> demo -> api
    ],
)
def test_a_back_import_breaks_a_contract(tmp_path, module, back_import):
    root = _stage(tmp_path)
    path = root / "fiacli" / module
    path.write_text(path.read_text() + f"\n{back_import}\n")
    out = _lint(root)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout

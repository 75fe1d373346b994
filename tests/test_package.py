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

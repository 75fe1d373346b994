"""Shared test fixtures: the ../shared reference folder, the CLI runner, offline settings."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never touch a model hub: a missing offline asset must fail fast, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test (fails under CI=true) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent: ../shared (reference data) is not part of a user's clone"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, but CI must have it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """Invoke ``fiacli`` in-process; returns exit code, stdout and stderr separately."""
    from typer.testing import CliRunner

    from fiacli.cli import app

    def run(*args: str, input: str | None = None) -> CliResult:
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def oracle(monkeypatch):
    """The CLI's model loader returns the tests' oracle model and records each load as
    ``(path, device, precision)``, so a test can see what was loaded (or that nothing was)."""
    from _oracle import Oracle

    import fiacli.app.pipeline

    model = Oracle()
    model.loaded = []

    def load(path, *, device="auto", precision="fp32"):
        model.loaded.append((str(path), device, precision))
        return model

    monkeypatch.setattr(fiacli.app.pipeline, "load_predictor", load)
    return model


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU: one thread avoids OpenMP oversubscription stalls (and every
    run compared in a module uses the same thread count, which fixes the float summation order)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small synthetic dataset in RefSegRS's layout (train_helpers.make_synth), one per module."""
    from train_helpers import make_synth

    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture
def usual_signals() -> Iterator[None]:
    """SIGINT, SIGHUP and SIGTERM at their usual dispositions for one test, and its children.

    fiacli leaves an ignored signal ignored (as ``nohup`` asks for SIGHUP), and a suite started
    by ``nohup`` or as a script's background job inherits SIGHUP or SIGINT ignored; the signal
    tests need them delivered. Put back afterwards, so ``nohup pytest`` still outlives a hangup
    between them."""
    usual = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: signal.SIG_DFL,
             signal.SIGTERM: signal.SIG_DFL}  # fmt: skip
    inherited = {sig: signal.getsignal(sig) for sig in usual}
    for sig, handler in usual.items():
        if inherited[sig] == signal.SIG_IGN:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in inherited.items():
            if handler == signal.SIG_IGN:
                signal.signal(sig, handler)

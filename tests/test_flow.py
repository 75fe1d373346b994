"""Flow: a signal that lands while a stage's thread starts must surface as itself."""

from __future__ import annotations

import threading

import pytest

from fiacli.geo.flow import Flow


class _Hangup(BaseException):
    """Stands in for the exception a signal handler raises (SignalExit in fiacli.core.signals)."""


def test_a_signal_during_a_thread_start_is_raised_not_hidden_by_join(monkeypatch) -> None:
    started = threading.Event()

    def interrupted_start(self: threading.Thread) -> None:
        raise _Hangup  # the handler ran before the thread was started

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(_Hangup), Flow() as flow:
        flow.spawn("stage", started.set)
    assert not started.is_set()


def test_leaving_a_flow_joins_its_started_threads() -> None:
    release = threading.Event()
    with Flow() as flow:
        thread = flow.spawn("stage", release.wait)
        release.set()
    assert not thread.is_alive()


def test_the_first_error_of_a_stage_is_raised_on_leaving() -> None:
    def boom() -> None:
        raise ValueError("stage failed")

    with pytest.raises(ValueError, match="stage failed"), Flow() as flow:
        flow.spawn("stage", boom).join()

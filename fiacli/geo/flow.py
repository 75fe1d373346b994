"""Stages of a streaming run: threads joined by bounded queues, one stop, per-stage clocks.

A run is a few stages (read, model, write, vectorise), each on its own thread or pool, passing
items through :class:`queue.Queue` objects of a small fixed size, so memory stays flat and the
slowest stage sets the pace. :class:`Flow` owns the threads of a run: the first error any of them
raises stops every stage (each waits on a queue at most :data:`POLL_S` before it looks at the
stop flag), is handed to the thread that consumes the results, and leaving the ``with`` block
joins every thread, whatever happened. :class:`StageClock` adds up, per stage, the seconds spent
working, waiting for input (the stage upstream is slower) and waiting for room downstream (the
stage downstream is slower): the manifest shows them, so a user sees which stage bounds a run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POLL_S = 0.05  # how long a blocked stage waits before it looks at the stop flag again
JOIN_S = 60.0  # how long leaving a Flow waits for a thread stuck in a long C call


class Stopped(Exception):
    """Raised inside a stage when the run stops because of another stage (not an error)."""


class StageClock:
    """Busy and waiting seconds of one stage, summed over its threads (thread-safe)."""

    def __init__(self, name: str, threads: int = 1) -> None:
        self.name, self.threads = name, threads
        self.busy_s = self.wait_in_s = self.wait_out_s = 0.0
        self.items = 0
        self._lock = threading.Lock()

    def add(self, *, busy: float = 0.0, wait_in: float = 0.0, wait_out: float = 0.0,
            items: int = 0) -> None:  # fmt: skip
        with self._lock:
            self.busy_s += busy
            self.wait_in_s += wait_in
            self.wait_out_s += wait_out
            self.items += items

    @contextmanager
    def busy(self, items: int = 0) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(busy=time.perf_counter() - t0, items=items)

    def as_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "busy_s": round(self.busy_s, 4),
            "wait_input_s": round(self.wait_in_s, 4),
            "wait_output_s": round(self.wait_out_s, 4),
            "items": self.items,
        }


class Flow:
    """The threads of one run, a stop flag they all watch, and the first error any raised."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self.clocks: dict[str, StageClock] = {}
        self._lock = threading.Lock()

    def clock(self, name: str, threads: int = 1) -> StageClock:
        if name not in self.clocks:
            self.clocks[name] = StageClock(name, threads)
        return self.clocks[name]

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` (the first one wins) and stop every stage."""
        with self._lock:
            if self.error is None and not isinstance(exc, Stopped):
                self.error = exc
        self.stop.set()

    def check(self) -> None:
        """Raise the recorded error (or :class:`Stopped`) once the run is stopping."""
        if self.stop.is_set():
            raise self.error if self.error is not None else Stopped()

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Run ``target(*args)`` on a new thread; an exception it raises stops the run."""

        def body() -> None:
            try:
                target(*args)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                self.fail(exc)

        thread = threading.Thread(target=body, name=f"fiacli-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def put(self, q: queue.Queue[Any], item: Any, clock: StageClock | None = None) -> None:
        """``q.put(item)``, waiting for room; raises if the run stops meanwhile."""
        t0 = time.perf_counter()
        try:
            while True:
                self.check()
                try:
                    q.put(item, timeout=POLL_S)
                    return
                except queue.Full:
                    continue
        finally:
            if clock is not None:
                clock.add(wait_out=time.perf_counter() - t0)

    def get(self, q: queue.Queue[Any], clock: StageClock | None = None) -> Any:
        """``q.get()``, waiting for an item; raises if the run stops meanwhile."""
        t0 = time.perf_counter()
        try:
            while True:
                self.check()
                try:
                    return q.get(timeout=POLL_S)
                except queue.Empty:
                    continue
        finally:
            if clock is not None:
                clock.add(wait_in=time.perf_counter() - t0)

    def close(self) -> None:
        """Stop every stage and join its thread.

        A thread whose start a signal interrupted may never have run: joining it would raise
        ``RuntimeError`` over the signal's own exception, so only live threads are joined.
        """
        self.stop.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=JOIN_S)

    def __enter__(self) -> Flow:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close()
        if exc_type is None and self.error is not None:
            raise self.error


END = object()  # the last item a stage puts on its output queue

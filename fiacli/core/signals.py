"""The signals a scheduler or a terminal sends, handled like Ctrl-C.

``timeout``, ``docker stop``, SLURM preemption and systemd send SIGTERM; a closed terminal sends
SIGHUP. By default either kills Python on the spot: no ``finally`` runs, so temporary files stay
and a training run loses everything since its last checkpoint. :func:`signals_as_interrupts`
(installed by the command line) turns them into :class:`Interrupted`, a :class:`KeyboardInterrupt`,
raised in the main thread, so every cleanup path written for Ctrl-C runs for them too; the
command then exits with 128 + the signal number (143 for SIGTERM, 129 for SIGHUP, 130 for Ctrl-C).

:func:`deferred_signals` holds all three while a few renames must happen together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

TERMINATING = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)
DEFERRED = (signal.SIGINT, *TERMINATING)


class Interrupted(KeyboardInterrupt):
    """A terminating signal (SIGTERM, SIGHUP) received by a fiacli command."""

    def __init__(self, signum: int | str = signal.SIGTERM) -> None:
        # a str when re-raised from elsewhere (torch re-raises a DataLoader worker's exception
        # from its message): keep the message, assume SIGTERM
        if isinstance(signum, int):
            self.signum = int(signum)
            super().__init__(signal_name(self.signum))
        else:
            self.signum = int(signal.SIGTERM)
            super().__init__(str(signum))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def interrupt_exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return getattr(exc, "exit_code", 128 + int(signal.SIGINT))


def interrupt_note(exc: BaseException) -> str | None:
    """What the interrupted code did about it (e.g. "saved a resumable checkpoint ...")."""
    return getattr(exc, "fiacli_note", None)


def set_interrupt_note(exc: BaseException, note: str) -> None:
    exc.fiacli_note = note  # type: ignore[attr-defined]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, and
    Ctrl-C its KeyboardInterrupt even when it lands in a finaliser (which would drop it).

    A signal that is ignored (``nohup`` ignores SIGHUP) stays ignored. After the first signal,
    further SIGTERM/SIGHUP are ignored, so a scheduler's repeated signal does not interrupt the
    cleanup it started (SIGKILL still ends everything; a second Ctrl-C still raises).
    Processes forked from this one (DataLoader workers) inherit the handler; in them it ignores
    the signal: SLURM signals every process of a job, and the main process shuts its workers
    down itself. Outside the main thread this does nothing.
    """
    if not _main_thread():
        yield
        return
    fired = False
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired or os.getpid() != owner:
            return
        if _swallowing(frame):  # raised here, the exception would be printed and dropped
            _resend_soon(signum)
            return
        fired = True
        raise Interrupted(signum)

    def ctrl_c(signum: int, frame: FrameType | None) -> None:
        if _swallowing(frame):  # Python's own handler would raise it there, and it would be lost
            _resend_soon(signum)
            return
        raise KeyboardInterrupt

    with _handling(TERMINATING, handler), _handling((signal.SIGINT,), ctrl_c):
        yield


@contextlib.contextmanager
def _handling(signals: tuple[int, ...], handler: Callable[[int, FrameType | None], None],
              *, skip_foreign: bool = False) -> Iterator[None]:  # fmt: skip
    """``handler`` for each of ``signals`` that is not ignored, the previous ones back after.

    ``skip_foreign``: leave alone a handler installed outside Python (``getsignal`` gives None)."""
    previous: dict[int, Any] = {}
    for sig in signals:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN or (current is None and skip_foreign):
            continue
        previous[sig] = current
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():  # None: set outside Python; the default then
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


# Python prints and drops an exception raised in these ("Exception ignored in …"): finalizers,
# and the callbacks os.fork runs (a DataLoader starting its workers)
_SWALLOWING_NAMES = frozenset(
    {"__del__", "_releaseLock", "_acquireLock", "_after_at_fork_child_reinit_locks"}
)
_SWALLOWING_FILES = ("popen_fork.py", "weakref.py")


def _swallowing(frame: FrameType | None, depth: int = 30) -> bool:
    while frame is not None and depth > 0:
        code = frame.f_code
        if code.co_name in _SWALLOWING_NAMES or code.co_filename.endswith(_SWALLOWING_FILES):
            return True
        frame, depth = frame.f_back, depth - 1
    return False


def _resend_soon(signum: int, delay: float = 0.05) -> None:
    """Deliver ``signum`` to this process again in a moment, out of the frame that would drop
    it (a timer thread sends it; the handler then runs in the main thread again)."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done, then deliver the first one.

    For steps that must not be cut in half (renaming a checkpoint's two files, the commit of an
    optimiser step). Outside the main thread this does nothing."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    try:
        with _handling(DEFERRED, hold, skip_foreign=True):
            yield
    finally:
        if pending:  # delivered even when the block failed: a preemption must not be lost
            signal.raise_signal(pending[0])  # the restored handler acts on it now


def ignore_terminating_signals(*_: Any) -> None:
    """``worker_init_fn`` for DataLoader workers: leave SIGTERM, SIGHUP and SIGINT to the main
    process. SLURM and ``kill -- -PGID`` signal every process of the job; a worker killed by it
    makes torch raise "DataLoader worker … is killed by signal" in the main process, in the
    middle of the cleanup that saves the resumable checkpoint. A worker whose main process is
    gone exits by itself (torch watches the parent)."""
    for sig in DEFERRED:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)

"""Unit tests of the fault handling pieces: inputs never overwritten, sidecars, signals, the
one-line error group. The end-to-end matrix over every command is tests/test_faults.py."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import (
    atomic_output,
    check_output_path,
    family,
    is_disk_full,
    refuse_overwriting_inputs,
)
from fiacli.core.signals import Interrupted, deferred_signals, signals_as_interrupts

pytestmark = pytest.mark.usefixtures("usual_signals")  # under nohup too

# ------------------------------------------------------------------ outputs never replace inputs


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "s.tif"
    path.write_bytes(b"scene")
    return path


@pytest.mark.parametrize(
    "make_output",
    [
        lambda s: s,  # the same path
        lambda s: s.parent / "." / s.name,  # through ./
        lambda s: s.parent / "sub" / ".." / s.name,  # through ..
        lambda s: _link(s, s.parent / "link.tif", hard=False),  # a symlink to it
        lambda s: _link(s, s.parent / "hard.tif", hard=True),  # a hard link (same inode)
    ],
    ids=["same", "dot", "dotdot", "symlink", "hardlink"],
)
def test_an_output_that_is_an_input_is_refused(scene, make_output):
    (scene.parent / "sub").mkdir()
    out = make_output(scene)
    with pytest.raises(UsageError, match="is the input"):
        refuse_overwriting_inputs([out], [scene])


def _link(target, link, *, hard):
    if hard:
        os.link(target, link)
    else:
        link.symlink_to(target)
    return link


def test_a_shapefile_output_is_compared_with_its_sidecars(tmp_path):
    dbf = tmp_path / "k.dbf"
    dbf.write_bytes(b"table")
    with pytest.raises(UsageError, match=r"k\.shp .*\.dbf file"):
        refuse_overwriting_inputs([tmp_path / "k.shp"], [dbf])
    refuse_overwriting_inputs([tmp_path / "other.shp"], [dbf])  # other stems are fine


def test_distinct_files_and_missing_inputs_pass(tmp_path, scene):
    refuse_overwriting_inputs([tmp_path / "out.tif", None], [scene, None, "/vsicurl/x.tif"])
    refuse_overwriting_inputs([tmp_path / "out.tif"], [tmp_path / "absent.tif"])


def test_upper_case_shapefile_owns_upper_case_sidecars(tmp_path):
    assert tmp_path / "A.DBF" in family(tmp_path / "A.SHP")
    assert tmp_path / "a.dbf" in family(tmp_path / "a.shp")


# ------------------------------------------------------------------ sidecars


def test_an_existing_sidecar_counts_as_an_existing_output(tmp_path):
    (tmp_path / "k.dbf").write_bytes(b"old table")
    with pytest.raises(FiacliError, match=r"k\.dbf already exists \(it belongs with k\.shp\)"):
        check_output_path(tmp_path / "k.shp", overwrite=False)
    check_output_path(tmp_path / "k.shp", overwrite=True)


def test_overwriting_a_shapefile_replaces_all_its_files(tmp_path):
    for ext in (".shp", ".shx", ".dbf", ".qix"):
        (tmp_path / f"k{ext}").write_text("old")
    with atomic_output(tmp_path / "k.shp", overwrite=True) as tmp:
        for ext in (".shp", ".shx", ".dbf"):
            tmp.with_suffix(ext).write_text("new")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["k.dbf", "k.shp", "k.shx"]  # the stale index went with the old file
    assert all(p.read_text() == "new" for p in tmp_path.iterdir())


# ------------------------------------------------------------------ disk full


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EFBIG, "File too large"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
        Exception("Error while serializing: I/O error: File too large (os error 27)"),
        RuntimeError("failed to execute insert : database or disk is full"),
    ],
)
def test_disk_full_is_recognised_whatever_the_library(exc):
    assert is_disk_full(exc)


def test_disk_full_is_recognised_through_the_cause():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("Write failed. See previous exception for details.") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(RuntimeError("some other failure"))


def test_atomic_output_turns_any_library_s_disk_full_into_one_error(tmp_path):
    full = RuntimeError("Error while serializing: I/O error: No space left on device")
    with pytest.raises(FiacliError, match="disk full"), atomic_output(tmp_path / "m.st") as tmp:
        tmp.write_bytes(b"half")
        raise full
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_tries_a_real_file(tmp_path, monkeypatch):
    import fiacli.core.io as io_mod

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", _raise(PermissionError(13, "denied")))
    with pytest.raises(FiacliError, match="not writable"):
        check_output_path(tmp_path / "x.tif", overwrite=False)
    assert list(tmp_path.iterdir()) == []


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


# ------------------------------------------------------------------ signals


def test_sigterm_and_sighup_raise_interrupted_with_their_exit_codes():
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        with pytest.raises(Interrupted) as info, signals_as_interrupts():
            signal.raise_signal(sig)
        assert info.value.exit_code == code
        assert isinstance(info.value, KeyboardInterrupt)  # every Ctrl-C cleanup path runs
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_a_second_sigterm_does_not_interrupt_the_cleanup():
    cleaned = []
    with pytest.raises(Interrupted), signals_as_interrupts():
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            signal.raise_signal(signal.SIGTERM)  # ignored
            cleaned.append(True)
    assert cleaned == [True]


def test_an_ignored_sighup_stays_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupts():
            signal.raise_signal(signal.SIGHUP)  # nohup: nothing happens
    finally:
        signal.signal(signal.SIGHUP, old)


def test_deferred_signals_arrive_after_the_block():
    done = []
    with pytest.raises(Interrupted), signals_as_interrupts(), deferred_signals():
        signal.raise_signal(signal.SIGTERM)
        done.append("renamed both")
    assert done == ["renamed both"]


# ------------------------------------------------------------------ one line per error


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["segment", "s.tif", "x", "--scope", "nowhere"], "--scope"),
        (["segment", "s.tif", "x", "--resolution", "abc"], "--resolution"),
        (["parse", "--token-length", "2", "hi"], "--token-length"),
        (["segment", "s.tif", "x", "--no-such-option"], "--no-such-option"),
        (["no-such-command"], "no-such-command"),
        (["models", "add"], "name"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(run_cli, args, needle):
    result = run_cli(*args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_an_unexpected_exception_asks_for_a_bug_report(run_cli, monkeypatch):
    import fiacli.text.parsing as parsing

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(parsing, "parse", boom)
    result = run_cli("parse", "the ship")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: unexpected ZeroDivisionError in fiacli parse")
    assert "--debug" in lines[0] and "Traceback" not in result.stderr
    with pytest.raises(ZeroDivisionError):  # --debug: the real exception, its traceback
        run_cli("--debug", "parse", "the ship")


# ------------------------------------------------------------------ hostile pickles


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # bytearray(2**44): MemoryError with an empty message, once reported as "()"
        (b"\x80\x04cbuiltins\nbytearray\n\x8a\x06\x00\x00\x00\x00\x00\x10\x85R.", "more memory"),
        (b"\x80\x04]\x94(K\x01K\x02", "EOFError|UnpicklingError"),  # truncated
        (b"\x80\x04h\x05.", r"not a readable pickle \(\w+"),  # a memo that is not there
    ],
    ids=["huge-bytearray", "truncated", "bad-memo"],
)
def test_a_broken_pickle_is_one_error_with_a_reason(data, match):
    from fiacli.core.safe_pickle import safe_loads

    with pytest.raises(FiacliError, match=match) as info:
        safe_loads(data)
    assert "()" not in str(info.value)


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGTERM, Interrupted),
                                                (signal.SIGINT, KeyboardInterrupt)])  # fmt: skip
def test_a_signal_landing_in_a_finalizer_is_delivered_after_it(signum, raised):
    """Python drops an exception raised in __del__ or a fork callback ("Exception ignored");
    a SIGTERM or Ctrl-C landing there is sent again a moment later instead of being lost (a
    Ctrl-C in the regex module's Group.__del__ was once ignored and the run finished)."""
    import time

    class Finalized:
        def __del__(self):
            signal.raise_signal(signum)  # the handler runs inside __del__

    with pytest.raises(raised), signals_as_interrupts():
        Finalized()  # collected at once
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)


# ------------------------------------------------------------------ checks before the model


@pytest.fixture
def small_scene(tmp_path):
    from _oracle import random_rgb, write_tif

    return write_tif(tmp_path / "s.tif", random_rgb(64, 64), tiled=True)


@pytest.mark.parametrize(
    "extra",
    [
        ["--dst-crs", "EPSG:999999"],
        ["--chip", "8"],
        ["--chip", "32", "--overlap", "40"],
        ["--batch-size", "0"],
        ["--resolution", "nan"],
        ["-o", "{tmp}/nodir/x.tif"],
        ["-o", "{tmp}/s.tif", "-f"],
        ["-o", "{tmp}/taken.tif"],
    ],
    ids=["dst-crs", "chip", "overlap", "batch-size", "resolution", "folder", "input", "exists"],
)
def test_option_errors_are_reported_before_the_model_loads(
    run_cli, monkeypatch, small_scene, tmp_path, extra
):
    import fiacli.app.api as api

    loads = []
    monkeypatch.setattr(api, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("load"))
    (tmp_path / "taken.tif").write_bytes(b"x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.tif")]
    result = run_cli("segment", str(small_scene), "the red car", *args)
    assert result.exit_code in (1, 2), result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert loads == []


def test_a_long_error_is_one_line_at_any_terminal_width(tmp_path):
    """Not a terminal (a log, a pipe): one line however narrow COLUMNS is."""
    import subprocess
    import sys

    missing = tmp_path / ("a-very-long-folder-name-" * 6) / "expressions.txt"
    env = {**os.environ, "COLUMNS": "30"}
    out = subprocess.run(
        [sys.executable, "-m", "fiacli", "parse", "-i", str(missing), "-o",
         str(tmp_path / "p.jsonl")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > 150, lines


@pytest.mark.parametrize("force", [[], ["-f"]])
def test_an_output_that_is_the_scene_is_a_usage_error_with_or_without_f(run_cli, small_scene,
                                                                        force):  # fmt: skip
    """Not "already exists; pass -f": -f would not help, so the advice must not be given."""
    r = run_cli("segment", str(small_scene), "the red car", "-o", str(small_scene), *force)
    assert r.exit_code == 2, r.stderr
    assert "pass -f" not in r.stderr and r.stderr.startswith("error: ")


def test_a_vrt_source_as_output_is_a_usage_error_even_without_f(run_cli, small_scene, tmp_path):
    """The scene's own files (a VRT's sources) are checked before "already exists" too."""
    from rasterio.shutil import copy

    vrt = tmp_path / "m.vrt"
    copy(str(small_scene), str(vrt), driver="VRT")
    r = run_cli("segment", str(vrt), "the red car", "-o", str(small_scene))
    assert r.exit_code == 2, r.stderr
    assert "pass -f" not in r.stderr and "is the input" in " ".join(r.stderr.split())

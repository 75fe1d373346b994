"""Atomic outputs and the allow-list unpickler."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from fiacli.core.errors import FiacliError
from fiacli.core.io import atomic_output, owner_tag, scratch_folder
from fiacli.core.safe_pickle import UnsafePickleError, safe_loads


def test_atomic_output_renames_only_on_success(tmp_path):
    final = tmp_path / "out.txt"
    with atomic_output(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()
        assert tmp.suffix == ".txt"
    assert final.read_text() == "done"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_output_gives_umask_permissions(tmp_path):
    # safetensors and GDAL may create their files 0600; outputs must be readable like any file.
    final = tmp_path / "model.safetensors"
    old = os.umask(0o022)
    try:
        with atomic_output(final) as tmp:
            tmp.write_text("x")
            tmp.chmod(0o600)
    finally:
        os.umask(old)
    assert final.stat().st_mode & 0o777 == 0o644


def test_atomic_output_keeps_previous_file_on_interrupt(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(final, overwrite=True) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_output_moves_shapefile_sidecars(tmp_path):
    final = tmp_path / "a.shp"
    with atomic_output(final) as tmp:
        for ext in (".shp", ".shx", ".dbf"):
            tmp.with_suffix(ext).write_text(ext)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dbf", "a.shp", "a.shx"]


def test_atomic_output_refusals(tmp_path):
    existing = tmp_path / "x.tif"
    existing.write_text("x")
    with pytest.raises(FiacliError, match="overwrite"), atomic_output(existing):
        pass
    missing_folder = tmp_path / "no" / "x.tif"
    with pytest.raises(FiacliError, match="does not exist"), atomic_output(missing_folder):
        pass


def test_atomic_output_refuses_read_only_folder(tmp_path, monkeypatch):
    # os.access is what the check asks; faked because root (CI) may write anywhere.
    monkeypatch.setattr("fiacli.core.io.os.access", lambda path, mode: False)
    with pytest.raises(FiacliError, match="not writable"), atomic_output(tmp_path / "x.tif"):
        pass


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_what_killed_runs_left_beside_an_output_is_removed_and_said(tmp_path, capsys):
    """SIGKILL leaves a run no time to clean up: the next write in that folder removes what dead
    processes of this machine left, and only that."""
    from fiacli.core.io import _start_ticks

    machine = owner_tag().split("-")[0]
    dead, parent = _dead_pid(), os.getppid()
    stale = [
        tmp_path / f".out.tmp-{machine}-{dead}-7.tif",
        tmp_path / f".out.tmp-{machine}-{dead}-7.tif.ovr",
        tmp_path / f".other.tmp-{machine}-{dead}-7.gpkg",  # another output's, same folder
        tmp_path / f".out.tmp-{machine}-{parent}-1.tif",
    ]  # its PID now another process's
    kept = [
        tmp_path / f".out.tmp-{machine}-{parent}-{_start_ticks(parent)}.tif",  # live
        tmp_path / f".out.tmp-otherhost_1-{dead}-7.tif",  # another machine or container
        tmp_path / f".out.tmp-{dead}.tif",  # fiacli 0.1.0's names: not judged
        tmp_path / f".data.old-{machine}-{dead}-7",
    ]  # a dataset being replaced: never litter
    for p in stale + kept:
        p.write_text("x")
    with atomic_output(tmp_path / "out.tif") as tmp:
        tmp.write_text("done")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "removed 4 temporary file(s) that killed fiacli runs left" in capsys.readouterr().err
    leftover = tmp_path / "sub" / f".fiacli-cog-{machine}-{dead}-7-abc123"
    leftover.mkdir(parents=True)
    (leftover / "mask.tif").write_text("x")
    with scratch_folder(tmp_path / "sub", "cog") as mine:
        assert not leftover.exists() and owner_tag() in mine
    assert not os.path.exists(mine)


def test_safe_unpickler_reads_plain_data_and_refuses_code():
    data = [{"image_id": 1, "sentences": [{"raw": "a ship", "tokens": ["a", "ship"]}]}]
    assert safe_loads(pickle.dumps(data)) == data
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_loads(pickle.dumps(Evil()))


def test_safe_unpickler_reports_garbage():
    with pytest.raises(FiacliError, match="not a readable pickle"):
        safe_loads(b"\x80\x04garbage")


def test_another_users_live_process_keeps_its_files(monkeypatch):
    """On clusters /proc is often hidden (hidepid) and os.kill says EPERM for another user's
    process: in doubt, a process counts as alive and its temporary files stay."""
    import fiacli.core.io as io

    machine = owner_tag().split("-")[0]

    def eperm(pid, sig):
        raise PermissionError

    monkeypatch.setattr(io.os, "kill", eperm)
    monkeypatch.setattr(io, "_start_ticks", lambda pid: None)
    assert not io._dead(machine, "4242", "7")
    assert not io._dead("otherhost_0123456789", "4242", "7")  # another machine: never judged

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
    """SIGKILL leaves a run no time to clean up: the next write beside its files removes those
    of dead processes of this host, and only those."""
    host = owner_tag().rsplit("-", 1)[0]
    dead = _dead_pid()
    stale = [tmp_path / f".out.tmp-{host}-{dead}.tif", tmp_path / f".out.tmp-{host}-{dead}.tif.ovr"]
    kept = [tmp_path / f".out.tmp-{host}-{os.getppid()}.tif",  # a live process: still writing
            tmp_path / f".out.tmp-otherhost-{dead}.tif",  # another machine's (shared disk)
            tmp_path / f".other.tmp-{host}-{dead}.tif",  # another output's, not touched here
            tmp_path / f".out.tmp-{dead}.tif"]  # fmt: skip
    for p in stale + kept:
        p.write_text("x")
    with atomic_output(tmp_path / "out.tif") as tmp:
        tmp.write_text("done")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "removed 2 temporary file(s) that a killed fiacli run left" in capsys.readouterr().err
    leftover = tmp_path / f".fiacli-cog-{host}-{dead}-abc123"
    leftover.mkdir()
    (leftover / "mask.tif").write_text("x")
    with scratch_folder(tmp_path, "cog") as mine:
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

"""Atomic outputs and the allow-list unpickler."""

from __future__ import annotations

import os
import pickle

import pytest

from fiacli.core.errors import FiacliError
from fiacli.core.io import atomic_output
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


def test_safe_unpickler_reads_plain_data_and_refuses_code():
    data = [{"image_id": 1, "sentences": [{"raw": "a ship", "tokens": ["a", "ship"]}]}]
    assert safe_loads(pickle.dumps(data)) == data
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_loads(pickle.dumps(Evil()))


def test_safe_unpickler_reports_garbage():
    with pytest.raises(FiacliError, match="not a readable pickle"):
        safe_loads(b"\x80\x04garbage")

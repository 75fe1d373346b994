"""Safe output files: write under a temporary name, rename when complete.

A crash, Ctrl-C or full disk never leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fiacli.core.errors import FiacliError

# formats whose dataset is several files sharing a stem
SIDECAR_SUFFIXES = {".shp": (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")}


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse early (before any work) when ``path`` cannot or must not be written."""
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise FiacliError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise FiacliError(f"output folder is not writable: {parent}")
    if final.exists() and not overwrite:
        raise FiacliError(f"{final} already exists; pass -f/--overwrite to replace it")
    if final.is_dir():
        raise FiacliError(f"{final} is a directory")
    return final


def _family(path: Path) -> list[Path]:
    """The file and the sidecar files that belong with it (e.g. a shapefile's .dbf)."""
    return [path] + [path.with_suffix(s) for s in SIDECAR_SUFFIXES.get(path.suffix.lower(), ())]


def _default_mode() -> int:
    """Permissions a new file gets from the user's umask (some writers create files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the extension, so format drivers chosen by extension still work.
    On any exception (KeyboardInterrupt included) the temporary file(s) are removed and the
    previous file at ``path``, if any, is left untouched.
    """
    final = check_output_path(path, overwrite=overwrite)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    for p in _family(tmp):
        _remove(p)
    try:
        yield tmp
        mode = _default_mode()
        for src, dst in zip(_family(tmp), _family(final), strict=True):
            if src.exists():
                if src.is_file():
                    os.chmod(src, mode)
                os.replace(src, dst)
            elif dst.exists() and dst != final:
                _remove(dst)  # a stale sidecar of the file we replaced
    except OSError as exc:
        for p in _family(tmp):
            _remove(p)
        if exc.errno == errno.ENOSPC:
            raise FiacliError(f"disk full while writing {final}; nothing was written") from exc
        raise
    except BaseException:
        for p in _family(tmp):
            _remove(p)
        raise

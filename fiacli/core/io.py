"""Safe output files: write under a temporary name, rename when complete.

A crash, Ctrl-C, SIGTERM or full disk never leaves a half-written file under the name the user
asked for, nor a temporary file beside it; an output never replaces one of the command's inputs,
not even with -f (:func:`refuse_overwriting_inputs`). SIGKILL (the OOM killer, a scheduler's
hard limit) leaves no time to clean up: temporary names carry the machine, PID and start time
of the process that wrote them (:func:`owner_tag`), and the next run writing in that folder
removes those of processes of this machine that no longer run (:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.signals import deferred_signals

# formats whose dataset is several files sharing a stem: the main file owns them all (they are
# checked, replaced and removed together)
SIDECAR_SUFFIXES = {".shp": (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")}
# what "the disk is full" looks like from the libraries fiacli writes with: errno, or the text of
# torch's, safetensors' (Rust), GDAL's and SQLite's messages (RLIMIT_FSIZE's EFBIG counts too)
DISK_FULL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None
)
DISK_FULL_TEXT = (
    "no space left",
    "disk is full",
    "file too large",
    "disk quota",
    "storagefull",
    "filetoolarge",
    "os error 28",
    "os error 27",
    "file write failed",  # torch's PytorchStreamWriter
)

PathLike = str | os.PathLike[str]


def family(path: str | os.PathLike[str]) -> list[Path]:
    """The file and the sidecar files that belong with it (e.g. a shapefile's .dbf).

    Sidecars follow the case of the main file's extension (``A.SHP`` owns ``A.DBF``)."""
    path = Path(path)
    suffixes = SIDECAR_SUFFIXES.get(path.suffix.lower(), ())
    upper = path.suffix.isupper()
    return [path] + [path.with_suffix(s.upper() if upper else s) for s in suffixes]


_family = family  # the name used before it was public


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or a quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        text = str(current).lower()
        if any(t in text for t in DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _probe_writable(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (root passes os.access everywhere, and
    /proc or a read-only mount answer only to a real attempt). Leaves nothing behind."""
    try:
        fd, name = tempfile.mkstemp(prefix=".fiacli-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return True


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse early (before any work) when ``path`` cannot or must not be written.

    A multi-file format counts as existing when any of its files exists (``-o k.shp`` with a
    ``k.dbf`` already there needs -f, which then replaces all of them)."""
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise FiacliError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK) or not _probe_writable(parent):
        raise FiacliError(f"output folder is not writable: {parent}")
    if final.is_dir():
        raise FiacliError(f"{final} is a directory")
    if not overwrite:
        for member in family(final):
            if member.exists() or member.is_symlink():
                owner = "" if member == final else f" (it belongs with {final.name})"
                raise FiacliError(
                    f"{member} already exists{owner}; pass -f/--overwrite to replace it"
                )
    return final


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """The resolved path, and (st_dev, st_ino) when the file exists (hard links share these)."""
    resolved = path.expanduser().resolve()
    try:
        st = os.stat(path.expanduser())
    except (OSError, ValueError):
        return resolved, None
    return resolved, (st.st_dev, st.st_ino)


def refuse_overwriting_inputs(
    outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None]
) -> None:
    """Refuse (a usage error, exit code 2) any output that is one of the inputs, -f or not.

    Two paths are the same file when they resolve to the same path (``./``, ``..``, symlinks)
    or share device and inode (hard links); a multi-file format is compared with all its
    sidecars, so ``-o scene.shp`` cannot replace an input ``scene.dbf``. ``None`` entries and
    inputs that are URLs or GDAL virtual paths are ignored."""
    seen: dict[Path, tuple[Path, tuple[int, int] | None]] = {}
    ids: dict[tuple[int, int], Path] = {}
    for item in inputs:
        if item is None or _is_virtual(item):
            continue
        for member in family(Path(item)):
            resolved, inode = _identity(member)
            seen[resolved] = (Path(item), inode)
            if inode is not None:
                ids[inode] = Path(item)
    for out in outputs:
        if out is None:
            continue
        for member in family(Path(out)):
            resolved, inode = _identity(member)
            source = seen.get(resolved, (None, None))[0]
            if source is None and inode is not None:
                source = ids.get(inode)
            if source is not None:
                what = "" if member == Path(out) else f" (whose {member.suffix} file is {member})"
                raise UsageError(
                    f"the output {out}{what} is the input {source}; write to another path "
                    "(-f never replaces an input)"
                )


def _is_virtual(path: PathLike) -> bool:
    text = os.fspath(path)
    return text.startswith("/vsi") or "://" in text


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


def _pid_namespace() -> int:
    """The PID namespace this process lives in (containers sharing a hostname have their own)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _machine() -> str:
    """Who can judge a temporary file: the same host (full name and machine id) in the same PID
    namespace; readable host prefix, then a digest (hosts named alike stay apart)."""
    host = socket.gethostname()
    machine_id = ""
    with contextlib.suppress(OSError):
        machine_id = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    digest = hashlib.blake2b(f"{host}|{machine_id}|{_pid_namespace()}".encode(), digest_size=5)
    return f"{re.sub(r'[^A-Za-z0-9]', '', host)[:16] or 'host'}_{digest.hexdigest()}"


_MACHINE = _machine()
_TAG = r"(?P<machine>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<start>\d+)(?![0-9])"
# what fiacli writes under a tag: temporary files beside outputs, hidden scratch folders/spools
_LITTER = re.compile(r"^\.(?:.+\.tmp-|fiacli-[a-z]+-)" + _TAG)
_SWEPT: set[tuple[int, str]] = set()  # (pid, folder) already swept by this process


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_tag() -> str:
    """``MACHINE-PID-START`` of this process, in the names of its temporary files and folders:
    with the start time, a PID that a later process reuses does not keep a dead one's files."""
    pid = os.getpid()
    return f"{_MACHINE}-{pid}-{_start_ticks(pid) or 0}"


def _dead(machine: str, pid: str, start: str) -> bool:
    """Whether a tag names a process that no longer runs. Only tags of this machine and PID
    namespace are judged (another host's or container's files on a shared disk never are), and
    any doubt (another user's process, a hidden /proc) counts as alive."""
    if machine != _MACHINE:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive (another user's) or not a PID at all: not ours to remove
    ticks = _start_ticks(int(pid))  # alive: the same process, or a later one reusing its PID?
    return ticks is not None and int(start) != 0 and ticks != int(start)


def dead_owner(tag: str) -> bool:
    """Whether ``tag`` (an :func:`owner_tag`) names a process of this machine that has ended."""
    match = re.fullmatch(_TAG, tag)
    return match is not None and _dead(match["machine"], match["pid"], match["start"])


def sweep_stale(folder: str | os.PathLike[str]) -> int:
    """Remove what killed fiacli processes left in ``folder`` (temporary files, scratch folders,
    polygon spools), once per folder and process; returns how many entries went."""
    key = (os.getpid(), os.path.realpath(folder))
    if key in _SWEPT:
        return 0
    _SWEPT.add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        match = _LITTER.match(entry.name)
        if match and _dead(match["machine"], match["pid"], match["start"]):
            _remove(Path(entry.path))
            removed += 1
    if removed:
        from fiacli.core.console import warn

        where = os.path.abspath(folder)
        warn(f"removed {removed} temporary file(s) that killed fiacli runs left in {where}")
    return removed


def scratch_folder(folder: str | os.PathLike[str], kind: str) -> tempfile.TemporaryDirectory[str]:
    """A hidden temporary folder in ``folder`` (``.fiacli-KIND-TAG-…``), removed on exit."""
    sweep_stale(folder)
    return tempfile.TemporaryDirectory(prefix=f".fiacli-{kind}-{owner_tag()}-", dir=folder)


def temporary_name(final: Path) -> Path:
    """The hidden name beside ``final`` that :func:`atomic_output` writes to."""
    return final.with_name(f".{final.stem}.tmp-{owner_tag()}{final.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the extension, so format drivers chosen by extension still work.
    On any exception (KeyboardInterrupt and SIGTERM included) the temporary file(s) are removed
    and the previous file at ``path``, if any, is left untouched; a full disk becomes one
    :class:`FiacliError`. Signals wait while the files are renamed into place.
    """
    final = check_output_path(path, overwrite=overwrite)
    sweep_stale(final.parent)
    tmp = temporary_name(final)
    for p in family(tmp):
        _remove(p)
    try:
        yield tmp
        mode = _default_mode()
        with deferred_signals():
            for src, dst in zip(family(tmp), family(final), strict=True):
                if src.exists():
                    if src.is_file():
                        os.chmod(src, mode)
                    os.replace(src, dst)
                elif dst.exists() and dst != final:
                    _remove(dst)  # a stale sidecar of the file we replaced
    except Exception as exc:
        for p in family(tmp):
            _remove(p)
        if is_disk_full(exc) and not isinstance(exc, FiacliError):
            raise FiacliError(f"disk full while writing {final}; nothing was written") from exc
        raise
    except BaseException:
        for p in family(tmp):
            _remove(p)
        raise

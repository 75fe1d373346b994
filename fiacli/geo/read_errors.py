"""Damaged rasters fail loudly: what GDAL says (or does not say) during a read, per window.

GDAL reports a damaged file in three ways, and by default fiacli would act on none of them:

* an error (a tile cut off, as in the first 150 kB of a COG; a broken LZW stream): rasterio
  raises ``RasterioIOError("Read failed. See previous exception for details.")``, the reason
  being in the exception it was raised from;
* a warning (libjpeg's "Corrupt JPEG data: …"): logged by rasterio and the garbage pixels are
  returned;
* nothing at all: libtiff stops inflating a DEFLATE tile as soon as its buffer is full, so the
  zlib checksum at the end of the stream is never compared and a damaged tile decodes to
  garbage silently. :class:`DeflateChecker` reads such tiles' bytes itself and checks them once.

:class:`ReadGuard` turns all three into :class:`RasterReadError`, naming the file and the window,
or with ``on_read_error="skip"`` hands back the window as nodata and remembers it (for the run
manifest). It is thread-safe: several reader threads may share one guard.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fiacli.core.errors import FiacliError
from fiacli.geo.choices import ON_READ_ERRORS, OnReadError

T = TypeVar("T")

# GDAL warnings during a read that do not mean the pixels are wrong
HARMLESS_WARNINGS = ("NotGeoreferenced", "has no geotransform")
CHUNK = 1 << 16  # bytes of a DEFLATE tile checked at a time
_RASTERIO_LOGGERS = ("rasterio._err", "rasterio._env", "rasterio._io", "rasterio._base")


class RasterReadError(FiacliError):
    """A window of a scene could not be read correctly (the file is damaged)."""

    def __init__(self, path: str, window: Any, detail: str) -> None:
        self.path, self.window, self.detail = path, describe_window(window), detail
        super().__init__(
            f"cannot read {path} at {self.window['text']}: {detail}; the file is damaged or "
            "cut short (--on-read-error skip treats such windows as nodata)"
        )


def describe_window(window: Any) -> dict[str, Any]:
    """A window as the manifest records it: column, row, width, height and a short text."""
    if window is None:
        return {"col": None, "row": None, "width": None, "height": None, "text": "the overview"}
    col, row = int(window.col_off), int(window.row_off)
    width, height = int(window.width), int(window.height)
    text = f"rows {row}-{row + height - 1}, columns {col}-{col + width - 1}"
    return {"col": col, "row": row, "width": width, "height": height, "text": text}


def first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def exception_detail(exc: BaseException) -> str:
    """GDAL's own reason, which rasterio keeps in the exception its error was raised from."""
    reasons = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        line = first_line(str(current))
        if line and "see previous exception" not in line.lower():
            reasons.append(line)
        current = current.__cause__ or current.__context__
    return reasons[-1] if reasons else type(exc).__name__


# --------------------------------------------------------------------------- GDAL warnings


class _ThreadSink(logging.Handler):
    """Collects rasterio's GDAL warnings, for the thread that is inside :func:`gdal_warnings`.

    GDAL calls its error handler in the thread that hit the problem, and rasterio logs it from
    there, so a thread-local list sees exactly the warnings of that thread's reads."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        sinks = getattr(self.local, "sinks", None)
        if sinks:
            message = record.getMessage()
            if not any(h in message for h in HARMLESS_WARNINGS):
                sinks[-1].append(message)


_SINK = _ThreadSink()
_INSTALLED = False
_INSTALL_LOCK = threading.Lock()


def _install() -> None:
    global _INSTALLED
    with _INSTALL_LOCK:
        if not _INSTALLED:
            for name in _RASTERIO_LOGGERS:
                logging.getLogger(name).addHandler(_SINK)
            _INSTALLED = True


@contextmanager
def gdal_warnings() -> Iterator[list[str]]:
    """The GDAL warnings logged by this thread while inside (nested blocks see their own)."""
    _install()
    sinks = getattr(_SINK.local, "sinks", None)
    if sinks is None:
        sinks = _SINK.local.sinks = []
    found: list[str] = []
    sinks.append(found)
    try:
        yield found
    finally:
        sinks.pop()


# --------------------------------------------------------------------------- DEFLATE tiles


class DeflateChecker:
    """Checks the zlib stream of every DEFLATE block a window touches, once per block.

    Only for local GeoTIFFs read on their own grid (a window of a WarpedVRT maps to source
    blocks in ways GDAL does not expose); everything else is left to GDAL's own errors. It uses
    its own dataset handle, under its lock, so reader threads may share it (a GDAL handle must
    not be used by two threads at once)."""

    def __init__(self, path: str, ds: Any) -> None:
        self.path = path
        self.checked: set[tuple[int, int, int]] = set()
        self.lock = threading.Lock()
        block_h, block_w = ds.block_shapes[0]
        self.block = (int(block_h), int(block_w))
        self.height, self.width = int(ds.height), int(ds.width)
        separate = str(getattr(ds.interleaving, "value", ds.interleaving)).lower() == "band"
        self.bands = list(range(1, ds.count + 1)) if separate else [1]
        self._meta: Any = None  # its own handle, for the block offsets only

    def _offsets(self, band: int, bx: int, by: int) -> tuple[str | None, str | None]:
        import rasterio

        with self.lock:
            if self._meta is None or self._meta.closed:
                self._meta = rasterio.open(self.path)
            tags = (f"BLOCK_OFFSET_{bx}_{by}", f"BLOCK_SIZE_{bx}_{by}")
            return tuple(self._meta.get_tag_item(t, "TIFF", bidx=band) for t in tags)  # type: ignore[return-value]

    def close(self) -> None:
        """Close its handle (a later check opens it again: clones of a scene share a checker)."""
        with self.lock:
            if self._meta is not None:
                self._meta.close()

    @classmethod
    def for_dataset(cls, path: str, ds: Any) -> DeflateChecker | None:
        """A checker when ``ds`` is a local DEFLATE GeoTIFF, else None."""
        try:
            compression = str(getattr(ds.compression, "value", ds.compression) or "").lower()
            local = os.path.isfile(path) and not path.startswith("/vsi")
            if ds.driver != "GTiff" or compression not in ("deflate", "zip") or not local:
                return None
            return cls(path, ds)
        except Exception:  # an unusual dataset: rely on GDAL's own errors
            return None

    def blocks(self, window: Any) -> Iterator[tuple[int, int]]:
        bh, bw = self.block
        r0, c0 = int(window.row_off), int(window.col_off)
        r1 = min(r0 + int(window.height), self.height)
        c1 = min(c0 + int(window.width), self.width)
        for by in range(max(r0, 0) // bh, max(r1 - 1, 0) // bh + 1):
            for bx in range(max(c0, 0) // bw, max(c1 - 1, 0) // bw + 1):
                yield bx, by

    def check(self, window: Any) -> str | None:
        """Why a block under ``window`` is damaged, or None when all are sound."""
        todo = []
        with self.lock:
            for bx, by in self.blocks(window):
                for band in self.bands:
                    key = (band, bx, by)
                    if key not in self.checked:
                        self.checked.add(key)
                        todo.append(key)
        if not todo:
            return None
        with open(self.path, "rb") as fh:
            for band, bx, by in todo:
                reason = self._check_block(fh, band, bx, by)
                if reason:
                    with self.lock:
                        self.checked.discard((band, bx, by))  # damaged: say so every time
                    return reason
        return None

    def _check_block(self, fh: Any, band: int, bx: int, by: int) -> str | None:
        offset, size = self._offsets(band, bx, by)
        if not offset or not size or int(size) == 0:
            return None  # a sparse block: GDAL fills it, nothing to check
        where = f"tile {bx},{by}" + (f" of band {band}" if len(self.bands) > 1 else "")
        fh.seek(int(offset))
        inflater = zlib.decompressobj()
        left = total = int(size)
        try:  # in pieces, output discarded: a few ten kB whatever the tile's size
            while left > 0 and not inflater.eof:
                data = fh.read(min(CHUNK, left))
                if not data:
                    return f"{where} is cut off ({total - left} of {total} bytes)"
                left -= len(data)
                while data and not inflater.eof:
                    inflater.decompress(data, CHUNK)
                    data = inflater.unconsumed_tail
        except zlib.error as exc:
            return f"{where}: damaged DEFLATE data ({exc})"
        if not inflater.eof:
            return f"{where}: its DEFLATE stream ends early"
        return None


# --------------------------------------------------------------------------- the guard


@dataclass
class ReadGuard:
    """Runs each read of a scene and decides what a damaged window means.

    ``on_error="fail"``: a :class:`RasterReadError` naming the window. ``"skip"``: the window
    is returned as nodata (``fill`` pixels, nothing valid) and listed in :attr:`skipped`.
    """

    path: str = ""
    on_error: OnReadError = "fail"
    checker: DeflateChecker | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_dataset(
        cls, path: str, ds: Any, *, on_error: OnReadError = "fail", check_blocks: bool = True
    ) -> ReadGuard:
        """The guard of a scene read from ``ds`` (``check_blocks``: windows are on ``ds``'s own
        grid, so its DEFLATE tiles can be checked; not through a WarpedVRT)."""
        checker = DeflateChecker.for_dataset(path, ds) if check_blocks else None
        return cls(path, on_error, checker)

    def __post_init__(self) -> None:
        if self.on_error not in ON_READ_ERRORS:
            from fiacli.core.errors import UsageError

            raise UsageError(
                f"unknown --on-read-error {self.on_error!r}; use {' or '.join(ON_READ_ERRORS)}"
            )

    def read(
        self,
        read: Callable[[Any], tuple[np.ndarray, np.ndarray]],
        window: Any,
        *,
        shape: tuple[int, int] | None = None,
        fill: tuple[int, int, int] = (0, 0, 0),
        check_blocks: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``read(window)`` -> (rgb, valid), checked; ``shape`` (h, w) of the nodata answer
        (default: the window's)."""
        try:
            reason = self.checker.check(window) if self.checker and check_blocks else None
            if reason is None:
                with gdal_warnings() as warned:
                    result = read(window)
                if not warned:
                    return result
                reason = f"GDAL: {warned[0]}"
        except FiacliError:
            raise
        except Exception as exc:
            if not _is_read_failure(exc):
                raise
            reason = exception_detail(exc)
        error = RasterReadError(self.path, window, reason)
        if self.on_error == "fail":
            raise error
        with self.lock:
            self.skipped.append({**error.window, "reason": reason})
        if shape is None:
            shape = (int(window.height), int(window.width))
        rgb = np.empty((3, *shape), np.uint8)
        rgb[:] = np.asarray(fill, np.uint8)[:, None, None]
        return rgb, np.zeros(shape, bool)

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()

    def summary(self) -> str | None:
        """One warning line about the skipped windows, or None."""
        if not self.skipped:
            return None
        first = self.skipped[0]
        more = f" and {len(self.skipped) - 1} more" if len(self.skipped) > 1 else ""
        return (
            f"{len(self.skipped)} damaged window(s) of {self.path} were read as nodata "
            f"(--on-read-error skip): {first['text']} ({first['reason']}){more}; the manifest "
            "lists them"
        )


def _is_read_failure(exc: BaseException) -> bool:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return isinstance(exc, (RasterioError, CPLE_BaseError))


__all__ = [
    "ON_READ_ERRORS",
    "DeflateChecker",
    "OnReadError",
    "RasterReadError",
    "ReadGuard",
    "describe_window",
    "exception_detail",
    "gdal_warnings",
]


# --------------------------------------------------------------------------- GDAL on stderr

_QUIETED = False


def _loaded_libtiffs() -> list[str]:
    """Paths of the libtiff copies loaded in this process (rasterio's wheel bundles its own)."""
    found: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rsplit(maxsplit=1)[-1] if "/" in line else ""
                name = os.path.basename(path)
                if name.startswith("libtiff") and ".so" in name and path not in found:
                    found.append(path)
    except OSError:  # not Linux: nothing to find this way
        pass
    return found


def quiet_gdal_stderr() -> None:
    """Keep GDAL and libtiff from printing on stderr before fiacli's own one-line error.

    GDAL's default error handler prints "ERROR 1: …" for errors raised outside rasterio's
    handlers (an unknown CRS): ``CPL_LOG`` sends it to the null device. libtiff's global
    handlers print "_tiffWriteProc: No space left on device." straight to stderr; GDAL reports
    the same error through its own per-file handler (rasterio turns it into the exception), so
    the global ones are switched off. ``fiacli --debug`` skips this."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    os.environ.setdefault("CPL_LOG", os.devnull)
    try:
        import ctypes

        import rasterio  # noqa: F401  (loads GDAL and its libtiff)

        for path in _loaded_libtiffs():
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                setter = getattr(lib, name, None)
                if setter is not None:
                    setter.restype = ctypes.c_void_p
                    setter(None)
    except Exception:  # never let quieting messages break a command
        pass

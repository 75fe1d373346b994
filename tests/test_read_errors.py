"""fiacli.geo.read_errors: damaged GeoTIFFs built on the fly fail with the window named, or are
read as nodata with --on-read-error skip; sound files pass untouched."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from fiacli.geo.read_errors import DeflateChecker, RasterReadError, ReadGuard, gdal_warnings

UTM = rasterio.Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0)


def _smooth(height: int = 512, width: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx // 4) % 256, (yy // 4) % 256, ((xx + yy) // 8) % 256]).astype(np.uint8)


def _write(path: Path, compress: str, data: np.ndarray | None = None, **extra) -> Path:
    data = _smooth() if data is None else data
    profile = dict(driver="GTiff", width=512, height=512, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=UTM, tiled=True, blockxsize=256, blockysize=256, compress=compress,
                   **extra)  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def _block(path: Path, bx: int, by: int) -> tuple[int, int]:
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    return offset, size


def damage(path: Path, bx: int = 1, by: int = 1, n: int = 16) -> Path:
    """Flip ``n`` bytes in the middle of one tile's compressed data."""
    offset, size = _block(path, bx, by)
    data = bytearray(path.read_bytes())
    start = offset + size // 3
    for i in range(start, start + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def _guarded(path: Path, on_error: str = "fail"):
    ds = rasterio.open(path)
    guard = ReadGuard(str(path), on_error, DeflateChecker.for_dataset(str(path), ds))  # type: ignore[arg-type]
    return ds, guard


def _read(ds):
    return lambda w: (ds.read(window=w), np.ones((int(w.height), int(w.width)), bool))


def test_gdal_decodes_a_damaged_deflate_tile_as_garbage_without_a_word(tmp_path):
    """Why DeflateChecker exists: GDAL says nothing, the pixels are simply wrong."""
    path = damage(_write(tmp_path / "d.tif", "deflate"))
    with rasterio.open(path) as ds, gdal_warnings() as warned:
        pixels = ds.read()
    assert not warned
    assert (pixels != _smooth()).any()


def test_a_damaged_deflate_tile_fails_naming_the_window_and_tile(tmp_path):
    path = damage(_write(tmp_path / "d.tif", "deflate"))
    ds, guard = _guarded(path)
    with ds:
        ok, valid = guard.read(_read(ds), Window(0, 0, 256, 256))  # tile 0,0 is sound
        assert valid.all() and (ok == _smooth()[:, :256, :256]).all()
        with pytest.raises(RasterReadError, match=r"rows 300-399, columns 200-299: tile 1,1"):
            guard.read(_read(ds), Window(200, 300, 100, 100))
        with pytest.raises(RasterReadError):  # every time, not only the first
            guard.read(_read(ds), Window(300, 300, 10, 10))


def test_a_damaged_jpeg_tile_fails_on_libjpeg_s_warning(tmp_path):
    path = damage(_write(tmp_path / "j.tif", "jpeg", photometric="YCBCR"), n=64)
    ds, guard = _guarded(path)
    assert guard.checker is None  # not DEFLATE: GDAL's warning is the signal
    with ds, pytest.raises(RasterReadError, match="GDAL: .*JPEG"):
        guard.read(_read(ds), Window(256, 256, 256, 256))


def test_a_broken_lzw_tile_fails_with_gdal_s_reason_not_see_previous_exception(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (3, 512, 512), dtype=np.uint8)
    path = damage(_write(tmp_path / "l.tif", "lzw", noise), n=64)
    ds, guard = _guarded(path)
    with ds, pytest.raises(RasterReadError) as info:
        guard.read(_read(ds), Window(256, 256, 256, 256))
    assert "previous exception" not in str(info.value)


def test_a_cog_cut_after_its_header_fails(tmp_path):
    src = _write(tmp_path / "full.tif", "deflate")
    offset, _ = _block(src, 1, 1)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[: offset + 10])
    ds, guard = _guarded(cut)
    with ds:
        guard.read(_read(ds), Window(0, 0, 100, 100))  # its first tiles are whole
        with pytest.raises(RasterReadError, match="cut off"):
            guard.read(_read(ds), Window(256, 256, 256, 256))


def test_skip_reads_a_damaged_window_as_nodata_and_records_it(tmp_path):
    path = damage(_write(tmp_path / "d.tif", "deflate"))
    ds, guard = _guarded(path, "skip")
    with ds:
        rgb, valid = guard.read(_read(ds), Window(256, 256, 200, 100), fill=(124, 116, 104))
    assert rgb.shape == (3, 100, 200) and not valid.any()
    assert (rgb[:, 0, 0] == (124, 116, 104)).all()
    assert guard.skipped == [{"col": 256, "row": 256, "width": 200, "height": 100,
                              "text": "rows 256-355, columns 256-455",
                              "reason": guard.skipped[0]["reason"]}]  # fmt: skip
    assert "tile 1,1" in guard.skipped[0]["reason"]
    assert "1 damaged window(s)" in guard.summary()


def test_a_sound_file_passes_and_each_tile_is_checked_once(tmp_path, monkeypatch):
    path = _write(tmp_path / "ok.tif", "deflate")
    ds, guard = _guarded(path)
    calls = []
    real = guard.checker._check_block
    monkeypatch.setattr(guard.checker, "_check_block", lambda *a: calls.append(a[1:]) or real(*a))
    with ds:
        for _ in range(3):
            rgb, _valid = guard.read(_read(ds), Window(0, 0, 512, 512))
    assert (rgb == _smooth()).all()
    assert sorted(calls) == [(1, x, y) for x in (0, 1) for y in (0, 1)]


def test_warnings_are_collected_per_thread(tmp_path):
    """Reader threads share the guard: one thread's damaged tile is not another's error."""
    bad = damage(_write(tmp_path / "j.tif", "jpeg", photometric="YCBCR"), n=64)
    good = _write(tmp_path / "g.tif", "jpeg", photometric="YCBCR")
    results = {}

    def read(name, path):
        with rasterio.open(path) as ds, gdal_warnings() as warned:
            for _ in range(5):
                ds.read(window=Window(256, 256, 256, 256))
            results[name] = list(warned)

    threads = [
        threading.Thread(target=read, args=(n, p)) for n, p in (("bad", bad), ("good", good))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["bad"] and not results["good"]


def test_an_unknown_policy_is_a_usage_error():
    from fiacli.core.errors import UsageError

    with pytest.raises(UsageError, match="--on-read-error"):
        ReadGuard("x.tif", "ignore")  # type: ignore[arg-type]

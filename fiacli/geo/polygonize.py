"""GDALPolygonize called directly: rasterio's polygons, without holding the GIL.

:func:`rasterio.features.shapes` runs GDAL's polygoniser and builds a GeoJSON-like dict per
polygon while holding Python's GIL, so the vectoriser's threads could not polygonise windows in
parallel. :func:`polygonize` makes the same calls into the same library (the libgdal bundled
with rasterio, through ctypes, which releases the GIL for each call): an Int32 MEM band of the
labels, a Byte MEM band of the mask, GDALPolygonize into an OGR Memory layer with 4-connectivity,
and each feature's geometry as WKB, read in layer order. The polygons are the very ones rasterio
returns (same vertices, same order: ``tests/test_polygonize.py`` checks it), and become shapely
geometries in one vectorised call. Where that library cannot be found, :func:`available` is
False and the vectoriser uses rasterio.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from typing import Any

import numpy as np

GDT_BYTE, GDT_INT32 = 1, 5
WKB_POLYGON = 3
OFT_INTEGER = 0
WKB_NDR = 1
CE_NONE = 0

_LIB: Any = None
_LOCK = threading.Lock()
_TRIED = False


def _library_path() -> str | None:
    """The libgdal rasterio was built with (its wheel bundles one), if it can be found."""
    import rasterio

    base = os.path.dirname(os.path.abspath(rasterio.__file__))
    for pattern in (os.path.join(base, os.pardir, "rasterio.libs", "libgdal*.so*"),
                    os.path.join(base, ".dylibs", "libgdal*.dylib")):  # fmt: skip
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _declare(lib: Any) -> None:
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    sigs = {
        "GDALGetDriverByName": (p, [ctypes.c_char_p]),
        "GDALCreate": (p, [p, ctypes.c_char_p, i, i, i, i, p]),
        "GDALAddBand": (i, [p, i, ctypes.POINTER(ctypes.c_char_p)]),
        "GDALGetRasterBand": (p, [p, i]),
        "GDALSetGeoTransform": (i, [p, ctypes.POINTER(d)]),
        "GDALClose": (i, [p]),
        "GDALDatasetCreateLayer": (p, [p, ctypes.c_char_p, p, i, p]),
        "OGR_Fld_Create": (p, [ctypes.c_char_p, i]),
        "OGR_Fld_Destroy": (None, [p]),
        "OGR_L_CreateField": (i, [p, p, i]),
        "GDALPolygonize": (i, [p, p, p, i, p, p, p]),
        "OGR_L_ResetReading": (None, [p]),
        "OGR_L_GetNextFeature": (p, [p]),
        "OGR_F_GetGeometryRef": (p, [p]),
        "OGR_F_GetFieldAsInteger": (i, [p, i]),
        "OGR_F_Destroy": (None, [p]),
        "OGR_G_WkbSize": (i, [p]),
        "OGR_G_ExportToWkb": (i, [p, i, ctypes.c_char_p]),
        "CPLGetLastErrorMsg": (ctypes.c_char_p, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


def _lib() -> Any:
    global _LIB, _TRIED
    with _LOCK:
        if not _TRIED:
            _TRIED = True
            try:
                path = _library_path()
                if path is not None:
                    lib = ctypes.CDLL(path)
                    _declare(lib)
                    if lib.GDALGetDriverByName(b"MEM") and lib.GDALGetDriverByName(b"Memory"):
                        _LIB = lib
            except (OSError, AttributeError):
                _LIB = None
        return _LIB


_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether :func:`polygonize` can run (rasterio's libgdal found, its drivers registered)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        import rasterio.env

        with rasterio.env.Env():  # registers GDAL's drivers, as rasterio does on first use
            pass
        _AVAILABLE = _lib() is not None
    return _AVAILABLE


def _mem_band(lib: Any, array: np.ndarray, gdal_type: int, transform: tuple) -> tuple[Any, Any]:
    """A MEM dataset whose one band is ``array`` (C-contiguous, kept alive by the caller)."""
    h, w = array.shape
    ds = lib.GDALCreate(lib.GDALGetDriverByName(b"MEM"), b"", w, h, 0, gdal_type, None)
    opts = (ctypes.c_char_p * 4)(
        f"DATAPOINTER={array.ctypes.data}".encode(),
        f"PIXELOFFSET={array.strides[1]}".encode(),
        f"LINEOFFSET={array.strides[0]}".encode(),
        None,
    )
    if lib.GDALAddBand(ds, gdal_type, opts) != CE_NONE:
        lib.GDALClose(ds)
        raise RuntimeError(f"GDAL: {lib.CPLGetLastErrorMsg().decode(errors='replace')}")
    lib.GDALSetGeoTransform(ds, (ctypes.c_double * 6)(*transform))
    return ds, lib.GDALGetRasterBand(ds, 1)


def polygonize(labels: np.ndarray, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of the 4-connected regions of ``labels > 0`` (int32), with their labels:
    ``rasterio.features.shapes(labels, mask=labels > 0, connectivity=4, transform=...)`` as
    shapely polygons and an int64 array."""
    import shapely

    lib = _lib()
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    mask = np.ascontiguousarray(labels > 0).view(np.uint8)
    t = transform
    gt = (t.c, t.a, t.b, t.f, t.d, t.e)
    src, band = _mem_band(lib, labels, GDT_INT32, gt)
    msk, mband = None, None
    vec = None
    try:
        msk, mband = _mem_band(lib, mask, GDT_BYTE, gt)
        vec = lib.GDALCreate(lib.GDALGetDriverByName(b"Memory"), b"", 0, 0, 0, 0, None)
        layer = lib.GDALDatasetCreateLayer(vec, b"polygons", None, WKB_POLYGON, None)
        field = lib.OGR_Fld_Create(b"image_value", OFT_INTEGER)
        lib.OGR_L_CreateField(layer, field, 1)
        lib.OGR_Fld_Destroy(field)
        if lib.GDALPolygonize(band, mband, layer, 0, None, None, None) != CE_NONE:
            raise RuntimeError(f"GDALPolygonize: {lib.CPLGetLastErrorMsg().decode()}")
        wkbs: list[bytes] = []
        values: list[int] = []
        lib.OGR_L_ResetReading(layer)
        while True:
            feature = lib.OGR_L_GetNextFeature(layer)
            if not feature:
                break
            geom = lib.OGR_F_GetGeometryRef(feature)
            buf = ctypes.create_string_buffer(lib.OGR_G_WkbSize(geom))
            lib.OGR_G_ExportToWkb(geom, WKB_NDR, buf)
            wkbs.append(buf.raw)
            values.append(lib.OGR_F_GetFieldAsInteger(feature, 0))
            lib.OGR_F_Destroy(feature)
    finally:
        for ds in (vec, msk, src):
            if ds:
                lib.GDALClose(ds)
    if not wkbs:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    return shapely.from_wkb(np.asarray(wkbs, dtype=object)), np.asarray(values, dtype=np.int64)

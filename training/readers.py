"""Reading dataset images and masks into numpy arrays, with errors that name the file.

Images are decoded with PIL (JPEG, PNG, 8-bit TIFF); TIFF variants PIL cannot decode fall back to
rasterio. Masks are thresholded grey images (RefSegRS: foreground = value > 50).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fiacli.core.errors import FiacliError

REFSEGRS_MASK_THRESHOLD = 50


class DataFileError(FiacliError):
    """A file of the dataset is missing, unreadable or inconsistent with its partner."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence PIL's warnings about damaged files: the decode error that follows is reported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit RGB image as uint8 HWC; grey or palette images are expanded to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _quiet(), Image.open(path) as img:
            if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "YCbCr"):
                raise DataFileError(f"image {path} is {img.mode}; fiacli expects 8-bit RGB")
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataFileError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff_rasterio(path)
        raise DataFileError(f"cannot read image {path}: not an image PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataFileError(f"cannot read image {path}: {exc}") from None


def _read_tiff_rasterio(path: Path) -> np.ndarray:
    """TIFF variants PIL does not decode (some GDAL compressions): read with rasterio."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.dtypes[0] != "uint8":
                    raise DataFileError(f"image {path} is {src.dtypes[0]}; fiacli expects uint8")
                bands = src.read(indexes=list(range(1, min(src.count, 3) + 1)))
    except RasterioIOError as exc:
        raise DataFileError(f"cannot read image {path}: {exc}") from None
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    if bands.shape[0] != 3:
        raise DataFileError(f"image {path} has {bands.shape[0]} bands; fiacli expects RGB")
    return np.ascontiguousarray(bands.transpose(1, 2, 0))


def read_mask(path: Path, threshold: int = REFSEGRS_MASK_THRESHOLD) -> np.ndarray:
    """A RefSegRS mask as bool HW: foreground where the (grey) value is above ``threshold``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _quiet(), Image.open(path) as img:
            if img.mode not in ("L", "I", "I;16", "F"):
                img = img.convert("L")
            return np.asarray(img) > threshold
    except FileNotFoundError:
        raise DataFileError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataFileError(f"cannot decode mask {path}: {exc}") from None

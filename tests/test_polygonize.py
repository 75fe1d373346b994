"""GDALPolygonize through ctypes gives rasterio.features.shapes' polygons, vertex for vertex."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage

from fiacli.geo import polygonize
from fiacli.geo.vectorize import FOUR, _polygons

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _rasterio(labels, transform):
    shapes = rasterio.features.shapes(labels, mask=labels > 0, connectivity=4,
                                      transform=transform)  # fmt: skip
    return _polygons(shapes)


@pytest.mark.skipif(not polygonize.available(), reason="rasterio's libgdal not found")
@pytest.mark.parametrize("seed", range(12))
def test_the_same_polygons_in_the_same_order_as_rasterio(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 150, 2)
    noise = ndimage.uniform_filter(rng.random((h, w)), int(rng.integers(1, 6)))
    labels, _ = ndimage.label(noise > rng.uniform(0.3, 0.7), structure=FOUR)  # holes too
    transform = Affine.translation(0, int(rng.integers(0, 5000)))
    a, va = _rasterio(labels.astype(np.int32), transform)
    b, vb = polygonize.polygonize(labels, transform)
    assert np.array_equal(va, vb)
    assert list(shapely.to_wkb(a)) == list(shapely.to_wkb(b))


@pytest.mark.skipif(not polygonize.available(), reason="rasterio's libgdal not found")
def test_nothing_to_polygonise_gives_empty_arrays():
    pieces, values = polygonize.polygonize(np.zeros((5, 7), np.int32), Affine.identity())
    assert len(pieces) == 0 and len(values) == 0

"""The choice lists of the geo layer's options, in a module that imports nothing heavy.

The command line builds its options (and ``--help``) from these, so they must not pull in
rasterio, scipy or GEOS; the modules that act on a choice import it from here.
"""

from __future__ import annotations

from typing import Literal, get_args

Blend = Literal["cosine", "crop", "none"]  # how overlapping chips are weighted (tiling)
BLENDS: tuple[str, ...] = get_args(Blend)

OnReadError = Literal["fail", "skip"]  # what a block that cannot be decoded does (read_errors)
ON_READ_ERRORS: tuple[str, ...] = get_args(OnReadError)

VECTOR_DRIVERS = {  # polygon output suffix -> OGR driver (vectorize)
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
    ".parquet": "Parquet",
}

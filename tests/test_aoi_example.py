"""The README's worked example for areas of interest, as written: parcels of the demo scene,
one expression per parcel, the bundled demo model (the picture docs/images/aoi-parcels.png is
this command's --preview)."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest

PARCELS_PY = """
# five parcels of the demo scene, each with what to find in it
import geopandas as gpd
from shapely import Polygon


def parcel(*corners):  # demo-scene pixels (column, row) -> EPSG:32633 metres
    return Polygon([(448000 + 0.5 * c, 5412000 - 0.5 * r) for c, r in corners])


gpd.GeoDataFrame(
    {"parcel": ["P-101", "P-102", "P-103", "P-104", "P-105"],
     "query": ["the white storage tank", "the gray storage tank", "the yellow vehicle",
               "the green tennis court", "the red vehicle"]},
    geometry=[parcel((585, 415), (700, 420), (695, 525), (590, 520)),
              parcel((280, 535), (390, 540), (385, 645), (285, 640)),
              parcel((245, 845), (355, 850), (350, 955), (250, 950)),
              parcel((945, 205), (1055, 210), (1050, 315), (950, 310)),
              parcel((925, 1045), (1035, 1050), (1030, 1155), (930, 1150))],
    crs="EPSG:32633",
).to_file("parcels.gpkg")
"""

COMMAND = ("segment --demo --aoi parcels.gpkg --expression-field query --keep-fields parcel "
           "--min-area 15 -o found.gpkg --preview parcels.png")  # fmt: skip


@pytest.mark.slow  # the demo model loads (about 10 s on 2 cores); the runs take a second
def test_readme_parcels_example(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(PARCELS_PY, "parcels.py", "exec"), {})
    r = run_cli(*COMMAND.split())
    assert r.exit_code == 0, r.stderr
    assert "AOI 1: 'the white storage tank'" in r.stdout
    found = gpd.read_file(tmp_path / "found.gpkg")
    parcels = gpd.read_file(tmp_path / "parcels.gpkg")
    # one object per parcel, the one its query names, inside the parcel
    assert sorted(found["parcel"]) == sorted(parcels["parcel"])
    for _, row in found.iterrows():
        own = parcels[parcels["parcel"] == row["parcel"]].iloc[0]
        assert row["expression"] == own["query"]
        assert row.geometry.within(own.geometry.buffer(1e-6))
    manifest = json.loads((tmp_path / "found.manifest.json").read_text())
    assert {a["picture"]["mode"] for a in manifest["areas"]} == {"one picture"}
    assert (tmp_path / "parcels.png").stat().st_size > 100_000

"""The README's worked example for areas of interest, as written: parcels of the demo scene,
one expression per parcel, the bundled demo model (the picture docs/images/aoi-parcels.png is
this command's --preview)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import geopandas as gpd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> tuple[str, str]:
    """The parcels script and the command, read from README.md between <!-- aoi-example -->
    markers so the two cannot drift apart."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- aoi-example -->")[1].split("<!-- /aoi-example -->")[0]
    script = block.split("```python")[1].split("```")[0]
    shell = block.split("```bash")[1].split("```")[0]
    command = " ".join(shell.replace("\\\n", " ").split("fiacli ", 1)[1].split())
    return script, command


@pytest.mark.slow  # the demo model loads (about 10 s on 2 cores); the runs take a second
def test_readme_parcels_example(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script, command = _readme_example()
    exec(compile(script, "parcels.py", "exec"), {})
    r = run_cli(*shlex.split(command))
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

"""fiacli from Python: load a model, segment a GeoTIFF, read the polygons, predict on an array.

    python examples/python_api.py                          # the bundled demo scene and model
    python examples/python_api.py SCENE.tif "the storage tank" -m my-model --out results/

Everything the CLI does is a function call away: ``load_model`` takes what ``-m`` takes (a
checkpoint, a registered name, nothing for the bundled demo model) and ``Segmenter.segment``
takes every ``fiacli segment`` option as a keyword.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import rasterio
from rasterio.windows import Window

from fiacli import demo_scene_path, load_model, parse
from fiacli.app.demo import DEMO_EXPRESSION, DEMO_MIN_AREA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", nargs="?", help="a GeoTIFF (default: the bundled demo scene)")
    parser.add_argument("expression", nargs="?", default=DEMO_EXPRESSION)
    parser.add_argument("-m", "--model", help="checkpoint or registered name (default: demo)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder")
    args = parser.parse_args()
    scene = Path(args.scene) if args.scene else demo_scene_path()
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.model)  # no model: the bundled demo model (one note on stderr)
    # how this model reads the expression: the object words and the spatial phrase
    parsed = parse(args.expression, model.predictor.parse_settings)
    print(f"{args.expression!r}: object {parsed.objects}, position {parsed.positions}")
    result = model.segment(
        scene,
        args.expression,
        args.out / "result.gpkg",
        preview=args.out / "result.png",
        min_area=DEMO_MIN_AREA,  # m²: drop specks and bits of look-alikes
        overwrite=True,
    )
    found = result.per_expression[0]
    print(f"{found['polygons']} polygon(s), {found['foreground_pixels']} pixel(s) "
          f"in {result.timings_s['total']:.1f} s")  # fmt: skip

    polygons = gpd.read_file(args.out / "result.gpkg")
    if polygons.empty:
        print("nothing found")
        return
    best = polygons.sort_values("mean_prob", ascending=False).iloc[0]
    centre = best.geometry.centroid
    print(f"most confident: {best.area_m2:.0f} m² at ({centre.x:.1f}, {centre.y:.1f}) "
          f"{polygons.crs.to_string()}, mean probability {best.mean_prob:.2f}")  # fmt: skip

    # the same model on an array in memory: the model-sized chip around that polygon
    side = model.predictor.image_size
    with rasterio.open(scene) as ds:
        row, col = ds.index(centre.x, centre.y)
        window = Window(col - side // 2, row - side // 2, side, side)
        rgb = ds.read([1, 2, 3], window=window, boundless=True)
    probs = model.predict(rgb, args.expression)
    print(f"{side}x{side} chip around it: {(probs > 0.5).sum()} pixel(s) above 0.5")
    print(f"wrote {args.out / 'result.gpkg'} and {args.out / 'result.png'}")


if __name__ == "__main__":
    main()

"""How the bundled demo assets are (re)made and checked: ``python -m fiacli.app.demo_tools_tools``.

Maintainer tools, kept apart from :mod:`fiacli.app.demo` (which the model lookup imports) so that
running the demo model here does not make the lookup import itself back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fiacli.app.demo import (
    ASSETS,
    DEMO_MIN_AREA,
    DEMO_MODEL_FILE,
    DEMO_SCENE_FILE,
    DEMO_TRUTH_FILE,
    build_demo_scene,
    default_spec,
    demo_model_path,
    demo_scene_path,
    demo_truth,
)


def pack_demo_model(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    recipe: list[str] | None = None,
    test_metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``src`` (a trained checkpoint) as the bundled demo model: every weight except the
    frozen offline text encoder (never stored) in float16, which halves the file; loading casts
    back to float32. ``recipe`` (the commands that trained it) and ``test_metrics`` go into the
    checkpoint's provenance."""
    from fiacli.models import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(src)
    for name, part in model.named_children():
        if name != "text_encoder":
            part.half()
    provenance = dict(meta.get("provenance") or {})
    provenance.update(
        packed_from=Path(src).name,
        weights="float16 (loaded as float32)",
        recipe=recipe or [],
        test=test_metrics or {},
    )
    target = Path(dst) if dst is not None else ASSETS / DEMO_MODEL_FILE
    save_checkpoint(target, model, {**meta, "provenance": provenance}, overwrite=True)
    return target


def check_demo(
    model: str | os.PathLike[str] | None = None,
    *,
    scene: str | os.PathLike[str] | None = None,
    truth: dict[str, Any] | None = None,
    expressions: list[str] | None = None,
    min_area: float = 0.0,
) -> list[dict[str, Any]]:
    """Run each demo expression on the demo scene (CLI defaults) and score it per object.

    For each expression: the target objects found (a polygon overlaps the object's box), the
    other objects hit, and the polygons that touch no object at all. This is how the quick
    start's expression was chosen: it must find its target and little else.
    """
    import tempfile

    import geopandas as gpd
    from shapely.geometry import box

    from fiacli.app.api import load_model

    truth = truth or demo_truth()
    segmenter = load_model(model, quiet=True)
    boxes = [box(*o["bbox_map"]) for o in truth["objects"]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fiacli-demo-") as tmp:
        for text in expressions or list(truth["expressions"]):
            out = Path(tmp) / "out.gpkg"
            result = segmenter.segment(
                scene or demo_scene_path(), text, out, min_area=min_area, overwrite=True
            )
            polygons = gpd.read_file(out).geometry
            targets = set(truth["expressions"].get(text, []))
            hit = {i for i, b in enumerate(boxes) if polygons.intersects(b).any()}
            stray = [g for g in polygons if not any(g.intersects(b) for b in boxes)]
            rows.append({
                "expression": text, "targets": sorted(targets),
                "found": sorted(hit & targets), "other_objects": sorted(hit - targets),
                "stray_polygons": len(stray),
                "stray_m2": round(float(sum(g.area for g in stray)), 1),
                "seconds": result.timings_s["total"],
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m fiacli.app.demo_tools pack|scene|check``: how the bundled assets are (re)made."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fiacli.app.demo_tools", description=main.__doc__
    )
    sub = parser.add_subparsers(dest="action", required=True)
    pack = sub.add_parser("pack", help="a trained checkpoint -> the bundled demo model")
    pack.add_argument("checkpoint")
    pack.add_argument("--recipe", help="text file with the commands that trained it")
    pack.add_argument("--test-metrics", help="fiacli eval --json output on the test split")
    scene = sub.add_parser("scene", help="(re)draw the bundled demo scene and its truth")
    scene.add_argument("--frame", type=int, help="object scale [default: the demo model's]")
    check = sub.add_parser("check", help="score every demo expression on the demo scene")
    check.add_argument("-m", "--model")
    check.add_argument("--min-area", type=float, default=DEMO_MIN_AREA)
    args = parser.parse_args(argv)
    if args.action == "pack":
        recipe = Path(args.recipe).read_text().splitlines() if args.recipe else None
        metrics = json.loads(Path(args.test_metrics).read_text()) if args.test_metrics else None
        path = pack_demo_model(
            args.checkpoint, recipe=recipe, test_metrics=metrics and metrics.get("metrics")
        )
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    elif args.action == "scene":
        from fiacli.models import read_checkpoint_meta

        spec = default_spec()
        spec.frame = args.frame or int(read_checkpoint_meta(demo_model_path())["image_size"])
        build_demo_scene(ASSETS / DEMO_SCENE_FILE, spec, truth=ASSETS / DEMO_TRUTH_FILE,
                         overwrite=True)  # fmt: skip
        size = (ASSETS / DEMO_SCENE_FILE).stat().st_size / 2**20
        print(f"wrote {ASSETS / DEMO_SCENE_FILE} ({size:.1f} MB, objects at {spec.frame} px scale)")
    else:
        for row in check_demo(args.model, min_area=args.min_area):
            print(json.dumps(row))


if __name__ == "__main__":
    main()

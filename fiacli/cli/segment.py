"""`fiacli segment`: describe an object, get its pixels from a GeoTIFF as a mask or polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fiacli.app.segment_options import Scope
from fiacli.cli.common import command, examples
from fiacli.cli.options import Device, JsonOutput, Overwrite
from fiacli.core.device import Precision
from fiacli.geo.choices import Blend, OnReadError

HELP = (
    "Segment the object an expression describes in a scene of any size.\n\n"
    "The scene is read and written window by window (memory holds about one row of chips, never "
    "the scene), chips are blended across their overlaps and outputs keep the scene's CRS and "
    "grid. The output "
    "format follows the extension: .tif (mask, one band per expression: 1 object, 0 background, "
    "255 nodata) or .gpkg/.geojson/.parquet/.shp/.fgb (polygons with expression, area_m2, "
    "pixels, mean_prob).\n\n"
    "--scope: spatial words are relative to what the model sees. chip (default): 'on the left' "
    "means the left of each chip. scene: a coarse pass over the whole scene shrunk to one chip "
    "finds where the expression points, then full-resolution chips with the object words only "
    "refine it there, so 'on the left' means the left of the whole scene.\n\n"
    "--aoi FILE / --bbox: answer the expression inside the places you mean, and read nothing "
    "else. Each AOI feature is one picture: 'on the left' means the left of the feature. A "
    "feature up to twice the chip on its longer side (960 px at 480) is read as one window, "
    "resized to the chip like the training images; a larger one is a scene of its own (chips, "
    "or with --scope scene a coarse pass over the feature). Results are clipped to each "
    "polygon; polygons carry aoi_id and --keep-fields; rasters cover the AOIs in the scene's "
    "grid (--crop: only their bounding window); the manifest lists every feature. Over many "
    "scenes, each scene runs the AOIs that overlap it and a scene that none overlaps is "
    "skipped.\n\n"
    "-m: a checkpoint, or a name from `fiacli models`; without it, the bundled demo model "
    "(trained on synthetic scenes only; say so on stderr). --demo segments the bundled demo "
    "scene (a synthetic 2,048² px GeoTIFF): every positional argument is then an expression, "
    "the demo expression when none is given.\n\n"
    "Several scenes: with -e/--expressions (or --expression-field) every positional argument "
    "is a scene (globs too), "
    "--input-list adds a file of them; -o takes a template ('out/{stem}.gpkg', {name}, "
    "{parent}) or a folder (-o out/ with --format). The model loads once; each scene gets its "
    "outputs and manifest, a failed scene does not stop the others (exit code 1 names them), "
    "finished scenes are skipped when run again (-f redoes them), and a table and a run "
    "manifest (fiacli-run.json) sum it up. Under torchrun the scenes are spread over the "
    "ranks, and scenes above --split-above megapixels (or all, with --split-scene) are cut "
    "into bands, one per rank, and assembled by rank 0. --mosaic: the inputs are tiles of one "
    "scene (a VRT is written beside the outputs), blended across their seams."
)


def _demo_arguments(scene: str | None, expression: list[str] | None) -> tuple[str, list[str]]:
    """With --demo, SCENE is the bundled scene and the positional words are expressions."""
    from fiacli.app.demo import demo_scene_path
    from fiacli.core.errors import UsageError

    given = [t for t in (scene, *(expression or [])) if t is not None]
    if given and (Path(given[0]).suffix.lower() in (".tif", ".tiff", ".vrt")
                  or Path(given[0]).is_file()):  # fmt: skip
        raise UsageError(f"--demo segments the bundled scene; remove the scene {given[0]!r}")
    return str(demo_scene_path()), given


def _demo_expression(demo: bool) -> list[str]:
    """The bundled scene's expression, when --demo is given without one."""
    from fiacli.app.demo import DEMO_EXPRESSION

    return [DEMO_EXPRESSION] if demo else []


def _read_expressions(positional: list[str] | None, repeated: list[str] | None,
                      file: Path | None) -> list[str]:  # fmt: skip
    from fiacli.text.parsing import read_expression_file

    texts = [*(positional or []), *(repeated or [])]
    if file is not None:
        texts += read_expression_file(file)
    return texts


def _segment_batch(scenes: list[str], texts: list[str], params: dict[str, Any],
                   batch: Any, areas: Any) -> None:  # fmt: skip
    """Many scenes (fiacli.app.batch): a summary table; exit code 1 names the failed scenes."""
    from fiacli.app.api import load_model
    from fiacli.app.batch import run_command
    from fiacli.app.segment_options import SegmentOptions
    from fiacli.core.errors import FiacliError

    def load(device: str, quiet: bool) -> Any:
        return load_model(params["model"], device=device, precision=params["precision"],
                          quiet=quiet)  # fmt: skip

    result = run_command(
        scenes, texts, params["output"], SegmentOptions.from_mapping(params), batch,
        model=params["model"], device=params["device"], precision=params["precision"],
        load=load, as_json=params["as_json"], inputs=[params["expressions_file"]],
        areas=areas,
    )  # fmt: skip
    if result.failed and result.rank == 0:  # the other ranks exit 0: torchrun then lets rank
        raise FiacliError(result.failure_line())  # 0 finish, and its line is the job's error


@command(
    "segment",
    help=HELP,
    epilog=examples(
        'fiacli segment --demo "the yellow vehicle" --min-area 15 -o demo.gpkg --preview demo.png',
        'fiacli segment scene.tif "the white van on the left road" -m model.safetensors '
        "-o van.gpkg --preview van.png",
        'fiacli segment scene.tif "the storage tank" -m my-model -o tanks.gpkg',
        'fiacli segment scene.tif -e "the storage tank" -e "the ship" -m model.safetensors '
        "-o objects.tif --probabilities probs.tif --cog",
        'fiacli segment big.tif "the airplane on the left" --scope scene -m model.safetensors '
        "-o plane.gpkg --min-area 50 --simplify 0.5 --dst-crs EPSG:4326",
        "fiacli segment scene.tif --aoi parcels.gpkg --expression-field query --keep-fields "
        "parcel_id -m model.safetensors -o found.gpkg",
        'fiacli segment scene.tif "the ship" --bbox 12.30,45.42,12.36,45.45 --bbox-crs EPSG:4326 '
        "-m model.safetensors -o ship.tif --crop",
        "fiacli segment rgbn_20cm.tif --expressions queries.txt --bands 1,2,3 --resolution 0.5 "
        "-m model.safetensors -o out.parquet --json",
        "fiacli segment 'archive/*.tif' --input-list more.txt -e \"the storage tank\" "
        "-m model.safetensors -o 'out/{stem}.gpkg'",
        "fiacli segment 'scenes/*.tif' --aoi parcels.gpkg --expression-field query "
        "-m model.safetensors -o 'out/{stem}.gpkg'",
        'torchrun --nproc_per_node 8 -m fiacli segment big.tif -e "the ship" -m model.safetensors '
        "-o out/ --format gpkg,tif --split-scene",
    ),
)
def segment(
    scene: Annotated[
        str | None,
        typer.Argument(
            help="Raster GDAL reads (GeoTIFF, COG, VRT, URL); omitted with --demo.",
            show_default=False,
        ),
    ] = None,
    expression: Annotated[
        list[str] | None, typer.Argument(help="What to find, e.g. 'the ship on the left'.")
    ] = None,
    expressions: Annotated[
        list[str] | None,
        typer.Option("-e", "--expression", help="Another expression (repeatable)."),
    ] = None,
    expressions_file: Annotated[
        Path | None,
        typer.Option("--expressions", help="Text file: one expression per line, # comments."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "-m",
            "--model",
            help="fiacli checkpoint (.safetensors) or a name from `fiacli models`. "
            "\\[default: the bundled demo model]",
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Segment the bundled synthetic demo scene (see above)."),
    ] = False,
    output: Annotated[  # str, not Path: a Path drops the "/" of -o FOLDER/
        list[str] | None,
        typer.Option(
            "-o", "--output", help="Output by extension; repeatable. \\[default: SCENE.gpkg]"
        ),
    ] = None,
    probabilities: Annotated[
        Path | None, typer.Option(help="Also write probabilities (uint8 0-255 GeoTIFF).")
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option(
            help="Also write a quicklook PNG: the scene with the result outlined, the "
            "expression as title."
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(help="Bands as R,G,B (1-based), or one band. \\[default: RGB, else 1,2,3]"),
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help="Resample to this many metres per pixel first.")
    ] = None,
    chip: Annotated[
        int | None, typer.Option(help="Chip side in pixels. \\[default: the model's, 480]")
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(help="Pixels shared by neighbouring chips. \\[default: chip/5, 96 at 480]"),
    ] = None,
    blend: Annotated[
        Blend,
        typer.Option(help="cosine-weighted average, each chip's centre only, or plain mean."),
    ] = "cosine",
    batch_size: Annotated[
        str,
        typer.Option(
            help="Chips per model call, or auto: the most that fit a CUDA device's memory "
            "(4 on CPU). On CUDA, out of memory halves it once, with a warning."
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            help="Threads for reading, writing and vectorising (1: every stage in turn on one "
            "thread; outputs are the same). \\[default: every CPU; 1 with a model on the CPU, "
            "which needs the cores]",
            min=0,
        ),
    ] = None,
    device: Device = "auto",
    precision: Annotated[
        Precision, typer.Option(help="fp16 needs CUDA; bf16 works on CPU too.")
    ] = "fp32",
    scope: Annotated[
        Scope,
        typer.Option(help="Where spatial words apply: each chip, or the whole scene (above)."),
    ] = "chip",
    threshold: Annotated[
        float, typer.Option(help="Probability above which a pixel is the object.")
    ] = 0.5,  # noqa: E501
    cog: Annotated[bool, typer.Option("--cog", help="Write .tif outputs as COGs.")] = False,
    min_area: Annotated[float, typer.Option(help="Drop polygons smaller than this (m²).")] = 0.0,
    simplify: Annotated[
        float, typer.Option(help="Simplify polygons with this tolerance (CRS units).")
    ] = 0.0,
    open_px: Annotated[
        int, typer.Option("--open", help="Remove specks narrower than 2·PX+1 pixels.")
    ] = 0,
    dst_crs: Annotated[str | None, typer.Option(help="Reproject polygons, e.g. EPSG:4326.")] = None,
    allow_ungeoreferenced: Annotated[
        bool,
        typer.Option(help="Accept a scene without CRS; outputs are in pixel coordinates."),
    ] = False,
    overwrite: Overwrite = False,
    input_list: Annotated[
        Path | None,
        typer.Option(help="Text file: one scene (or glob) per line, # comments."),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Files written per scene with -o FOLDER/, e.g. gpkg,tif. \\[default: gpkg]",
        ),
    ] = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop at the first scene that fails.")
    ] = False,
    split_scene: Annotated[
        bool,
        typer.Option(
            "--split-scene", help="Under torchrun, cut every scene into bands, one per rank."
        ),
    ] = False,
    split_above: Annotated[
        float,
        typer.Option(help="Under torchrun, cut scenes larger than this (megapixels) into bands."),
    ] = 100.0,
    mosaic: Annotated[
        bool,
        typer.Option("--mosaic", help="The scenes are tiles of one mosaic: segment them as one."),
    ] = False,
    run_manifest: Annotated[
        Path | None,
        typer.Option(
            help="Where the run manifest goes. \\[default: fiacli-run.json beside the outputs]"
        ),
    ] = None,
    manifest: Annotated[
        bool,
        typer.Option(
            help="Write OUTPUT.manifest.json beside the first output: model, options, "
            "timings, counts."
        ),
    ] = True,
    on_read_error: Annotated[
        OnReadError,
        typer.Option(
            help="A damaged part of the scene (a tile GDAL cannot decode, or decodes wrongly): "
            "fail naming it, or skip it as nodata (a warning; the manifest lists the windows)."
        ),
    ] = "fail",
    aoi: Annotated[
        str | None,
        typer.Option(
            help="Areas of interest: a vector file (GPKG, GeoJSON, Shapefile, GeoParquet …), "
            "reprojected to the scene's CRS. Each feature is one picture (see above).",
            show_default=False,
        ),
    ] = None,
    aoi_layer: Annotated[
        str | None, typer.Option(help="Layer of --aoi to read. \\[default: the first]")
    ] = None,
    aoi_where: Annotated[
        str | None,
        typer.Option(help="SQL filter picking --aoi features, e.g. \"kind = 'parcel'\"."),
    ] = None,
    aoi_crs: Annotated[
        str | None, typer.Option(help="CRS of an --aoi file that declares none.")
    ] = None,
    bbox: Annotated[
        str | None,
        typer.Option(
            help="One area of interest MINX,MINY,MAXX,MAXY in the scene's CRS (or --bbox-crs).",
            show_default=False,
        ),
    ] = None,
    bbox_crs: Annotated[
        str | None, typer.Option(help="CRS of --bbox, e.g. EPSG:4326. \\[default: the scene's]")
    ] = None,
    expression_field: Annotated[
        str | None,
        typer.Option(
            help="Attribute of --aoi holding each feature's own expression (any -e apply to "
            "every feature too)."
        ),
    ] = None,
    keep_fields: Annotated[
        list[str] | None,
        typer.Option(help="Attributes of --aoi copied onto the polygons (NAME,NAME or repeated)."),
    ] = None,
    crop: Annotated[
        bool,
        typer.Option(
            "--crop", help="Rasters cover only the AOIs' bounding window, not the whole scene."
        ),
    ] = False,
    as_json: JsonOutput = False,
) -> None:
    from fiacli.app.api import load_model
    from fiacli.app.areas import AreaOptions, preflight_areas
    from fiacli.app.segment_options import SegmentOptions, preflight
    from fiacli.core.console import console, print_json
    from fiacli.core.errors import UsageError

    params = locals()  # the options, by the names of SegmentOptions' and AreaOptions' fields
    if demo:
        scene, expression = _demo_arguments(scene, expression)
    elif scene is None and input_list is None:
        raise UsageError("no scene given: fiacli segment SCENE EXPRESSION (or --demo)")
    # several scenes, globs, templates, torchrun (--demo too: one scene, ranks share it) …
    from fiacli.app.batch import BatchOptions, under_torchrun, wants_batch

    batch = BatchOptions.from_mapping(params)
    # with -e/--expressions (or --expression-field: the features bring them) every positional
    # is a scene (with --demo, they are expressions)
    repeated = not demo and bool(expressions or expressions_file or expression_field)
    scenes = [s for s in ([scene, *(expression or [])] if repeated else [scene]) if s is not None]
    areas = AreaOptions.from_mapping(params)
    given = _read_expressions(None if repeated else expression, expressions, expressions_file)
    if (input_list is not None and scene is not None and not demo and not given
            and not expression_field):  # fmt: skip
        raise UsageError(f"no expression given: {scene!r} is read as a scene; with --input-list, "
                         "give the expression with -e")  # fmt: skip
    if not given and not expression_field:  # the AOIs may bring the expressions
        given = _demo_expression(demo)
    if areas.active and batch.mosaic and not under_torchrun():  # AOIs over tiles: their mosaic
        from fiacli.app.batch import mosaic_scene

        job = mosaic_scene(scenes, output, SegmentOptions.from_mapping(params), batch,
                           inputs=[model, expressions_file])  # fmt: skip
        scene, output = job.scene, job.outputs
        params.update(probabilities=job.options.probabilities, preview=job.options.preview)
    elif scene is None or wants_batch(scenes, output, SegmentOptions.from_mapping(params), batch):
        _segment_batch(scenes, given, params, batch, areas)
        return
    options = SegmentOptions.from_mapping(params)
    outputs = list(output or [Path(Path(scene).stem + ".gpkg")])
    from fiacli.app.named_models import resolve_model

    model_file = resolve_model(model).path  # an unknown name fails here, before any work
    # before paying for the model; no output may replace an input
    inputs = [model_file, expressions_file]
    if areas.active:  # every AOI feature is one picture (fiacli.app.areas)
        area_plan = preflight_areas(scene, given, outputs, options, areas, inputs=inputs)
        segmenter = load_model(model, device=device, precision=precision)
        result = segmenter.segment(scene, area_plan.expressions, outputs, areas=area_plan,
                                   show_progress=not as_json)  # fmt: skip
    else:
        plan = preflight(scene, given, outputs, options, inputs=inputs)
        segmenter = load_model(model, device=device, precision=precision)
        result = segmenter.segment(scene, plan.expressions, outputs, options,
                                   show_progress=not as_json)  # fmt: skip
    if as_json:
        print_json(result.to_dict())
        return
    for record in getattr(result, "areas", []):
        texts = "; ".join(
            f"{e['expression']!r}: {e['foreground_pixels']} px"
            + ("" if e["polygons"] is None else f", {e['polygons']} polygon(s)")
            for e in record["per_expression"]
        )  # fmt: skip
        console.print(f"AOI {record['id']}: {texts}", highlight=False)
    for item in result.per_expression:
        polys = "" if item["polygons"] is None else f", {item['polygons']} polygon(s)"
        console.print(
            f"{item['expression']!r}: {item['foreground_pixels']} pixel(s){polys}",
            highlight=False,
        )
    written = [result.outputs["mask"], result.outputs["probabilities"],
               *result.outputs["vectors"], result.outputs["preview"],
               result.outputs["manifest"]]  # fmt: skip
    for path in written:
        if path:
            console.print(f"wrote {path}", highlight=False)

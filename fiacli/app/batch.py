"""Many scenes in one ``fiacli segment`` run, on one process or many ranks.

    fiacli segment a.tif b.tif 'tiles/*.tif' --input-list scenes.txt -e "the storage tank" \\
        -o 'out/{stem}.gpkg'

:func:`segment_many` loads the model once and encodes every expression once for the whole run
(:class:`~fiacli.app.scaleout.RunPredictor`); each scene gets its own outputs and manifest, as
with one scene. ``-o`` is a template (``{stem}``, ``{name}``, ``{parent}`` of the scene) or a
folder (``-o out/``, one file per ``--format``); a template that maps two scenes to one file is
refused before anything runs, and so is an output folder that cannot be written, before the model
loads. A scene that fails does not stop the others (``fail_fast`` does); its row in the summary
says why. A scene whose outputs and manifest are complete for the same model, expressions and
options is skipped (``overwrite`` redoes it), so a killed run, run again, continues where it
stopped. The run writes a run manifest (``fiacli-run.json`` beside the first scene's outputs).

Under torchrun the same call spreads the scenes over the ranks (:mod:`fiacli.app.scaleout`):
largest first, balanced by pixels, with scenes above ``split_above`` megapixels (or all, with
``split_scene``) cut into bands, one per rank, and assembled by rank 0. ``mosaic`` makes one
scene of all the inputs (a VRT written beside the outputs), so tile seams are blended like chip
seams.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from fiacli import __version__
from fiacli.app.scaleout import (
    Cluster,
    JobProgress,
    RunPredictor,
    assemble,
    chips_of,
    describe_error,
    part_key,
    plan_units,
    remove_tree,
    reusable_part,
    run_band,
    split_supported,
)
from fiacli.app.segment_options import Outputs, SegmentOptions, clean_expressions, plan_outputs
from fiacli.core.console import info, warn
from fiacli.core.errors import FiacliError, UsageError
from fiacli.core.io import (
    atomic_output,
    check_output_path,
    dead_owner,
    owner_tag,
    refuse_overwriting_inputs,
)
from fiacli.core.signals import signals_as_interrupts

if TYPE_CHECKING:
    from fiacli.app.areas import AreaOptions, AreaPlan

PathLike = str | os.PathLike[str]
GLOB_CHARS = frozenset("*?[")
FIELDS = ("stem", "name", "parent")
FORMATS = ("gpkg", "geojson", "parquet", "shp", "fgb", "tif")
RUN_MANIFEST = "fiacli-run.json"
MOSAIC_STEM = "mosaic"
_REUSE_ONLY = object()  # a split scene's coarse pass skipped: its parts are all reusable


@dataclass(frozen=True)
class BatchOptions:
    """How a run over many scenes goes (the ``fiacli segment`` options of the same names)."""

    input_list: Path | None = None
    output_format: str | None = None
    fail_fast: bool = False
    split_scene: bool = False
    split_above: float = 100.0  # megapixels
    mosaic: bool = False
    run_manifest: Path | None = None

    def __post_init__(self) -> None:
        for name in ("input_list", "run_manifest"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BatchOptions:
        """The fields found in ``values`` (a command's parameters), other keys ignored."""
        out = cls(**{n: values[n] for n in BATCH_FIELD_NAMES if n in values})
        out.check()
        return out

    def check(self) -> None:
        if not (self.split_above == self.split_above and self.split_above > 0):  # NaN too
            raise UsageError(
                f"--split-above must be a positive number of megapixels, not {self.split_above}"
            )
        if self.output_format is not None:
            formats(self.output_format)
        if self.run_manifest is not None and self.run_manifest.suffix.lower() != ".json":
            raise UsageError(
                f"--run-manifest writes JSON; give a .json path, not {self.run_manifest}"
            )

    @property
    def is_default(self) -> bool:
        return self == BatchOptions()


BATCH_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(BatchOptions))


def formats(text: str | None = None) -> list[str]:
    """``--format gpkg,tif`` -> ``["gpkg", "tif"]`` (default: gpkg)."""
    if not text:
        return ["gpkg"]
    items = [t.strip().lower().lstrip(".") for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise UsageError(f"unknown --format {text!r}; use one or more of {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------------------------
# inputs


def has_glob(text: str) -> bool:
    return any(c in text for c in GLOB_CHARS)


def _is_virtual(text: str) -> bool:
    return text.startswith("/vsi") or "://" in text


def expand_scenes(patterns: Sequence[PathLike], input_list: PathLike | None = None) -> list[str]:
    """Scene names from arguments (globs expanded, sorted) and a list file, duplicates dropped.

    A list file holds one scene (or glob) a line, ``#`` comments; relative names are relative
    to the list file's folder. A glob that matches nothing is a usage error."""
    items: list[tuple[str, Path | None]] = [(os.fspath(p), None) for p in patterns]
    if input_list is not None:
        path = Path(input_list)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no path
        except (OSError, UnicodeDecodeError) as exc:
            raise FiacliError(f"cannot read --input-list {path}: {exc}") from None
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not entries:
            raise FiacliError(f"--input-list {path} names no scene")
        items += [(e, path.parent) for e in entries]
    out: list[str] = []
    for text, base in items:
        if base is not None and not _is_virtual(text) and not Path(text).is_absolute():
            text = str(base / text) if str(base) not in ("", ".") else text
        if has_glob(text) and not _is_virtual(text) and not Path(text).exists():
            found = sorted(glob.glob(text, recursive=True))
            if not found:
                raise UsageError(f"no file matches {text!r}")
            out += found
        else:
            out.append(text)
    seen: set[str] = set()
    unique = []
    for text in out:
        key = text if _is_virtual(text) else str(Path(text).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(text)
    if not unique:
        raise UsageError("no scene given")
    return unique


def under_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun's ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def wants_batch(scenes: Sequence[str], output: Sequence[PathLike] | None,
                options: SegmentOptions, batch: BatchOptions) -> bool:  # fmt: skip
    """Whether a command line asks for a batch run rather than the one-scene form."""
    if len(scenes) != 1 or not batch.is_default:
        return True
    if has_glob(scenes[0]) and not Path(scenes[0]).exists():
        return True
    if under_torchrun():
        return True
    paths = [*(output or []), options.probabilities, options.preview]
    return any(p is not None and (_is_template(p) or _is_folder(p)) for p in paths)


def _is_template(path: PathLike) -> bool:
    return "{" in os.fspath(path)


def _is_folder(path: PathLike) -> bool:
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir() or Path(text).suffix == ""


# --------------------------------------------------------------------------------------------
# outputs


def render(template: PathLike, scene: str) -> Path:
    """A template's path for one scene: ``{stem}``, ``{name}``, ``{parent}`` (its folder's name)."""
    text = os.fspath(template)
    if not _is_template(text):
        return Path(text)
    name = scene.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    where = PurePosixPath(scene.split("?", 1)[0]) if _is_virtual(scene) else Path(
        os.path.abspath(scene))  # fmt: skip
    values = {"stem": Path(name).stem, "name": name, "parent": where.parent.name}
    try:
        path = Path(text.format_map(values))
    except (KeyError, ValueError, IndexError) as exc:
        raise UsageError(
            f"bad output template {text!r} ({exc}); use {{stem}}, {{name}} or {{parent}}"
        ) from None
    if "{parent}" in text and not values["parent"]:  # '{parent}/x' would be /x
        raise UsageError(f"{{parent}} of {scene} is empty; use {{stem}} or {{name}} in -o")
    return path


def output_templates(output: Sequence[PathLike] | None, batch: BatchOptions) -> list[str]:
    """``-o`` values as templates: a folder gives ``FOLDER/{stem}.FORMAT`` per ``--format``."""
    fmts = formats(batch.output_format)
    if not output:
        return [f"{{stem}}.{f}" for f in fmts]
    out, folder = [], False
    for o in output:
        text = os.fspath(o)
        if not _is_template(text) and _is_folder(text):
            folder = True
            out += [str(Path(text) / f"{{stem}}.{f}") for f in fmts]
        else:
            out.append(text)
    if batch.output_format is not None and not folder:
        raise UsageError("--format names the files of an output folder; give -o FOLDER/")
    return out


@dataclass
class SceneJob:
    """One scene of the run and where its results go."""

    index: int
    scene: str
    outputs: list[Path]
    options: SegmentOptions
    plan: Outputs
    tiles: list[str] | None = None  # a mosaic's tiles (``scene`` is then its VRT)


def _mkdir(folder: Path) -> None:
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FiacliError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def plan_jobs(scenes: Sequence[str], output: Sequence[PathLike] | None, options: SegmentOptions,
              batch: BatchOptions, *,
              inputs: Sequence[PathLike | None] = ()) -> list[SceneJob]:  # fmt: skip
    """Every scene's outputs, checked before anything runs: templates, clashes, folders."""
    templates = output_templates(output, batch)
    if batch.mosaic:
        names, tiles = [MOSAIC_STEM], list(scenes)
    else:
        names, tiles = list(scenes), None
    jobs = []
    for i, name in enumerate(names):
        outs = [render(t, name) for t in templates]
        changes = {k: render(getattr(options, k), name) for k in ("probabilities", "preview")
                   if getattr(options, k) is not None}  # fmt: skip
        opts = replace(options, **changes)
        for p in [*outs, *changes.values()]:
            _mkdir(p.parent if str(p.parent) else Path("."))
        plan = plan_outputs(outs, replace(opts, overwrite=True))  # extensions, folders writable
        scene = name
        if batch.mosaic:
            scene = str(plan.finals()[0].with_name(f"{plan.finals()[0].stem}.vrt"))
        jobs.append(SceneJob(i, scene, outs, opts, plan, tiles))
    owners: dict[Path, str] = {}
    for job in jobs:
        paths = [*job.plan.finals(), job.plan.manifest]
        if job.tiles:
            paths.append(Path(job.scene))
        for p in paths:
            if p is None:
                continue
            key = p.resolve()
            if key in owners and owners[key] != job.scene:
                raise UsageError(
                    f"{p} would be written for both {owners[key]} and {job.scene}; "
                    "use {stem}, {name} or {parent} in -o (or -o FOLDER/)"
                )
            owners[key] = job.scene
    run_manifest = run_manifest_path(jobs, batch)
    refuse_overwriting_inputs([*owners, run_manifest], [*scenes, *inputs])
    if run_manifest.resolve() in owners:
        raise UsageError(
            f"the run manifest {run_manifest} is also a scene's output; use --run-manifest"
        )
    if run_manifest.is_dir():
        raise UsageError(f"the run manifest {run_manifest} is a folder; give a .json file")
    _mkdir(run_manifest.parent if str(run_manifest.parent) else Path("."))
    check_output_path(run_manifest, overwrite=True)  # a folder that cannot be written: now
    return jobs


def write_mosaic(job: SceneJob) -> bool:
    """Write the VRT of a ``--mosaic`` job's tiles; False when it was there already, unchanged
    (then a finished mosaic's manifest stays valid)."""
    from fiacli.app.vrt import mosaic_xml, write_vrt

    xml, _ = mosaic_xml(job.tiles or [])
    path = Path(job.scene)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text(encoding="utf-8") == xml:
            return False
    if path.exists() and not job.options.overwrite:  # another file, or other tiles' VRT
        raise FiacliError(f"{path} already exists; pass -f/--overwrite to replace it")
    write_vrt(path, xml)
    return True


def mosaic_scene(tiles: Sequence[PathLike], output: Sequence[PathLike] | None,
                 options: SegmentOptions, batch: BatchOptions, *,
                 inputs: Sequence[PathLike | None] = ()) -> SceneJob:  # fmt: skip
    """``tiles`` (and ``batch.input_list``) as one scene for the one-scene paths (an AOI run):
    the job a batch ``--mosaic`` run plans (its outputs, templates filled, checked), with its
    VRT written."""
    job = plan_jobs(expand_scenes(tiles, batch.input_list), output, options, batch,
                    inputs=inputs)[0]  # fmt: skip
    write_mosaic(job)
    return job


def run_manifest_path(jobs: Sequence[SceneJob], batch: BatchOptions) -> Path:
    if batch.run_manifest is not None:
        return batch.run_manifest
    first = jobs[0].plan.finals()[0]
    return first.with_name(RUN_MANIFEST)


# --------------------------------------------------------------------------------------------
# resuming


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_key(model_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """What identifies the model in a manifest (the device may change between runs)."""
    return {k: v for k, v in (model_info or {}).items() if k != "device"}


def _area_records(areas: Sequence[Any], texts: list[str]) -> list[Any]:
    """What an AOI run's manifest lists of each feature that identifies it: id, bounds in the
    scene's CRS, expressions (an edited AOI file or another GeoDataFrame changes them)."""
    from fiacli.app.areas import area_bounds, area_texts

    return _json_roundtrip([[a.id, area_bounds(a), area_texts(a, texts)] for a in areas])


def _matching_manifest(job: SceneJob, texts: list[str], model_info: Mapping[str, Any] | None,
                       areas: AreaOptions | None = None,
                       plan: AreaPlan | None = None) -> dict | None:  # fmt: skip
    """The manifest of ``job`` when it was written for this scene, model, expressions, options
    and outputs; with ``areas``, for these areas of interest too (``plan``: this scene's)."""
    bands = texts
    if areas is not None:  # the bands, as the AOI run names them
        from fiacli.app.areas import area_slots

        bands = area_slots(areas, texts)
    man = job.plan.manifest
    if man is None or not man.is_file():
        return None
    try:
        data = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("command") != "segment":
        return None
    scene = data.get("scene")
    if data.get("expressions") != bands or not isinstance(scene, dict) or str(
            scene.get("path")) != job.scene:  # fmt: skip
        return None
    if model_key(data.get("model")) != _json_roundtrip(model_key(model_info)):
        return None
    if data.get("outputs") != _json_roundtrip(job.plan.as_dict()):
        return None
    expected = _json_roundtrip({**job.options.record(),
                                **(areas.record() if areas is not None else {})})  # fmt: skip
    recorded = data.get("options")
    if not isinstance(recorded, dict):
        return None
    for k, v in expected.items():
        if k in ("chip", "overlap") and v is None:
            continue  # the model's default: the same model gives the same value
        if recorded.get(k) != v:
            return None
    if areas is None and (recorded.get("aoi") is not None or recorded.get("bbox") is not None):
        return None  # the outputs of a run restricted to areas of interest
    if plan is not None:
        recs = data.get("areas")
        got = [[r.get("id"), r.get("bounds"), r.get("expressions")] if isinstance(r, dict)
               else None for r in (recs if isinstance(recs, list) else [])]  # fmt: skip
        if got != _area_records(plan.areas, texts):
            return None
    if not isinstance(data.get("chips", {}), dict) or not isinstance(
            data.get("timings_s", {}), dict):  # fmt: skip
        return None  # not a manifest this version wrote: redo the scene
    per = data.get("per_expression", [])
    if not isinstance(per, list) or not all(isinstance(p, dict) for p in per):
        return None
    return data


def completed(job: SceneJob, texts: list[str], model_info: Mapping[str, Any] | None,
              areas: AreaOptions | None = None,
              plan: AreaPlan | None = None) -> dict | None:  # fmt: skip
    """The manifest of ``job`` when its outputs are complete for this model, these expressions
    and options (and areas); None when the scene must be (re)done."""
    data = _matching_manifest(job, texts, model_info, areas, plan)
    if data is None or not all(p.exists() for p in job.plan.finals()):
        return None
    return data


def _partial(job: SceneJob, texts: list[str], model_info: Mapping[str, Any] | None,
             areas: AreaOptions | None = None, plan: AreaPlan | None = None) -> bool:  # fmt: skip
    """Outputs left by an interrupted run of this very job (its manifest matches but a file is
    missing): they may be replaced without -f."""
    return _matching_manifest(job, texts, model_info, areas, plan) is not None


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class BatchResult:
    """What a run did: one row per scene, and the run manifest's content."""

    rows: list[dict[str, Any]]
    payload: dict[str, Any] = field(default_factory=dict)
    manifest: Path | None = None
    rank: int = 0
    world: int = 1

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] in ("failed", "not run")]

    def failure_line(self) -> str:
        bad = [r for r in self.rows if r["status"] == "failed"]
        names = ", ".join(r["scene"] for r in bad[:10]) + (" …" if len(bad) > 10 else "")
        not_run = sum(r["status"] == "not run" for r in self.rows)
        if not bad:
            return f"{not_run} of {len(self.rows)} scene(s) not run (--fail-fast)"
        extra = f"; {not_run} not run (--fail-fast)" if not_run else ""
        return f"{len(bad)} of {len(self.rows)} scene(s) failed: {names}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return self.payload or {"scenes": self.rows}


Loader = Callable[[], Any]


def segment_many(
    scenes: Sequence[PathLike],
    expressions: str | Sequence[str],
    output: PathLike | Sequence[PathLike] | None = None,
    options: SegmentOptions | None = None,
    *,
    model: Any,
    model_info: Mapping[str, Any] | None = None,
    batch: BatchOptions | None = None,
    show_progress: bool = False,
    cluster: Cluster | None = None,
    split_parts: int | None = None,
    inputs: Sequence[PathLike | None] = (),
    areas: AreaOptions | None = None,
    **changes: Any,
) -> BatchResult:
    """Segment ``expressions`` in every scene; see the module docstring.

    ``areas`` (an :class:`~fiacli.app.areas.AreaOptions`, or its fields as keywords: ``aoi=``,
    ``bbox=`` …): segment only inside these areas of interest (:mod:`fiacli.app.areas`), in
    every scene one overlaps; the others are skipped (row status ``skipped``, with a note). An
    AOI file is read once per CRS of the scenes, and checked before anything runs.

    ``model``: a loaded model (an object with ``predictor`` and ``model_info``, such as a
    :class:`~fiacli.app.api.Segmenter`) or a function returning one, called only when some
    scene has work left; ``model_info`` identifies it in the manifests without loading it.
    ``scenes`` may hold globs; ``batch.input_list`` adds a list file. ``split_parts``: bands per
    split scene (default: one per rank). No output may replace a scene or one of ``inputs``
    (the model, an expressions file).
    """
    from fiacli.app.areas import AREA_FIELD_NAMES, AreaOptions

    area_changes = {k: changes.pop(k) for k in list(changes) if k in AREA_FIELD_NAMES}
    if area_changes:
        areas = AreaOptions.build(areas, **area_changes)
    opts = SegmentOptions.build(options, **changes)
    bopts = batch or BatchOptions()
    bopts.check()
    areas = areas if areas is not None and areas.active else None
    if areas is not None:
        from fiacli.app.areas import check_area_source

        areas.check()
        check_area_source(areas)  # a bad AOI file fails here, on every rank alike
    own_texts = areas is not None and areas.expression_field
    given = [expressions] if isinstance(expressions, str) else list(expressions)
    texts = clean_expressions(given) if given or not own_texts else []
    names = expand_scenes([os.fspath(s) for s in scenes], bopts.input_list)
    outs = [output] if isinstance(output, (str, os.PathLike)) else output
    aoi = None if areas is None else areas.aoi
    aoi_file = aoi if isinstance(aoi, (str, os.PathLike)) else None
    jobs = plan_jobs(names, outs, opts, bopts, inputs=[*inputs, bopts.input_list, aoi_file])
    if model_info is None and not callable(model):
        model_info = getattr(model, "model_info", None)
    own_cluster = cluster is None
    cluster = cluster or Cluster.from_env()
    try:
        with signals_as_interrupts():  # torchrun and schedulers stop ranks with SIGTERM
            run = _Run(jobs, names, texts, opts, bopts, model, model_info, cluster,
                       show_progress=show_progress, split_parts=split_parts,
                       areas=areas)  # fmt: skip
            return run.execute()
    finally:
        if own_cluster:
            cluster.close()


class _Run:
    def __init__(self, jobs: list[SceneJob], names: list[str], texts: list[str],
                 options: SegmentOptions, batch: BatchOptions, model: Any,
                 model_info: Mapping[str, Any] | None, cluster: Cluster, *,
                 show_progress: bool, split_parts: int | None,
                 areas: AreaOptions | None = None) -> None:  # fmt: skip
        self.jobs, self.names, self.texts = jobs, names, texts
        self.areas = areas
        self._loaded: dict[str, Any] = {}  # the AOIs, read once per scene CRS
        self.options, self.batch, self.model = options, batch, model
        self.model_info = dict(model_info) if model_info is not None else None
        self.cluster, self.show = cluster, show_progress
        self.split_parts = split_parts
        self.manifest_path = run_manifest_path(jobs, batch)
        self.t_start = time.perf_counter()

    # ---- helpers

    def _digest(self) -> str:
        payload = [self.names, [[str(p) for p in j.plan.finals()] for j in self.jobs],
                   self.texts, self.options.record(), model_key(self.model_info),
                   asdict(self.batch), self.split_parts,
                   None if self.areas is None else self.areas.record()]  # fmt: skip
        return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()

    def _probe(self, job: SceneJob) -> dict[str, Any]:
        from fiacli.geo.raster import open_scene

        out: dict[str, Any] = {"error": None, "done": None}
        try:
            changed = job.tiles is not None and write_mosaic(job)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc = open_scene(job.scene, bands=job.options.bands,
                                resolution=job.options.resolution,
                                allow_ungeoreferenced=job.options.allow_ungeoreferenced,
                                stretch=False)  # fmt: skip
            with sc:
                out.update(
                    height=sc.height, width=sc.width, dtype=str(sc.src.dtypes[sc.indexes[0] - 1])
                )
            plan = None
            if self.areas is not None:
                from fiacli.app.areas import NoAreaInScene

                try:  # existing outputs: checked below, as for whole scenes
                    plan = self._area_plan(job, overwrite=True)
                except NoAreaInScene:
                    out["no_areas"] = True
                    out["leftover"] = any(p.exists() for p in job.plan.finals())
                    return out
                out.update(area_windows=plan.window_sizes(), notes=plan.notes)
            if not job.options.overwrite and not changed:
                data = completed(job, self.texts, self.model_info, self.areas, plan)
                if data is not None:
                    out["done"] = _row_from_manifest(data)
                else:
                    out["partial"] = _partial(job, self.texts, self.model_info, self.areas, plan)
        except FiacliError as exc:
            out["error"] = str(exc)
        except Exception as exc:
            out["error"] = describe_error(exc)
        return out

    def _area_plan(self, job: SceneJob, overwrite: bool | None = None) -> AreaPlan:
        """``job``'s areas of interest (:func:`fiacli.app.areas.preflight_areas`), without
        the warnings for the features outside the scene (over many scenes: most of them)."""
        from fiacli.app.areas import preflight_areas

        opts = job.options if overwrite is None else replace(job.options, overwrite=overwrite)
        assert self.areas is not None
        plan = preflight_areas(job.scene, self.texts, job.outputs, opts, self.areas,
                               loaded=self._loaded)  # fmt: skip
        return replace(plan, outside=[])

    def _load(self) -> Any:
        seg = self.model() if callable(self.model) else self.model
        info_ = dict(getattr(seg, "model_info", None) or {})
        if self.model_info is None:
            self.model_info = info_
        elif "device" in info_:
            self.model_info["device"] = info_["device"]
        return seg

    # ---- the run

    def execute(self) -> BatchResult:
        cl = self.cluster
        digest = self._digest()
        cl.check_same(digest, "list of scenes, outputs or options")
        self.job_dir = self.manifest_path.parent / f".fiacli-job-{digest[:12]}"
        if cl.is_main:  # a killed run's stop request is not this run's (ranks wait below)
            self._sweep_killed_jobs()
            with contextlib.suppress(OSError):
                (self.job_dir / "stop").unlink()
        probes: list[dict[str, Any]] = []
        if cl.is_main:
            if len(self.jobs) > 1 and self.show:
                info(f"checking {len(self.jobs)} scenes")
            probes = [self._probe(j) for j in self.jobs]
        probes = cl.broadcast(probes, what="sharing the scene list")
        if self.batch.mosaic and probes[0]["error"]:
            raise FiacliError(probes[0]["error"])
        if self.areas is not None:
            self._check_areas(probes)
        todo = [
            j for j, p in zip(self.jobs, probes, strict=True)
            if not p["error"] and not p["done"] and not p.get("no_areas")
        ]  # fmt: skip
        for j, p in zip(self.jobs, probes, strict=True):
            if p.get("partial"):  # left by an interrupted run of the same job
                j.options = replace(j.options, overwrite=True)
        records: list[dict[str, Any]] = []
        busy = 0.0
        units: list[Any] = []
        try:
            if todo:
                seg = self._load()
                records, busy, units = self._work(todo, probes, seg)
            gathered = cl.gather({"records": records, "busy": busy},
                                 what="collecting the results")  # fmt: skip
            rows: list[dict[str, Any]] = []
            payload: dict[str, Any] = {}
            if cl.is_main:
                rows = self._rows(probes, [g["records"] for g in gathered])
                payload = self._payload(rows, gathered, units, probes)
                with atomic_output(self.manifest_path, overwrite=True) as tmp:
                    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
            shared = cl.broadcast({"rows": rows, "payload": payload}, what="finishing")
        finally:
            if cl.is_main:
                remove_tree(self.job_dir)
            else:
                self._remove_own(units)
        return BatchResult(shared["rows"], shared["payload"], self.manifest_path, cl.rank, cl.world)

    def _check_areas(self, probes: list[dict[str, Any]]) -> None:
        """Areas of interest that overlap no scene are an error (as with one scene: a bbox
        with its coordinates swapped should not pass as N scenes skipped); the AOIs' own notes
        are said once, not once a scene."""
        assert self.areas is not None
        if all(p.get("no_areas") for p in probes):
            what = ("the --bbox" if self.areas.bbox is not None
                    else f"the areas of interest ({self.areas.record()['aoi']})")  # fmt: skip
            n = len(probes)
            raise FiacliError(f"{what} overlap{'s' if self.areas.bbox is not None else ''} "
                              f"none of the {n} scene{'s' if n != 1 else ''}")  # fmt: skip
        if self.cluster.is_main:
            for note in dict.fromkeys(n for p in probes for n in p.get("notes", [])):
                warn(note)
            if self.batch.split_scene:
                warn("--split-scene: scenes with areas of interest are not split; one rank runs "
                     "each scene's areas")  # fmt: skip

    def _sweep_killed_jobs(self) -> None:
        """Remove the job folders that SIGKILLed runs of other jobs left beside the outputs:
        those whose every owner was a process of this machine that has ended (a job running
        now, or one run from another host, is never touched; this job's own folder is kept
        for the parts it can reuse)."""
        removed = 0
        for folder in self.manifest_path.parent.glob(".fiacli-job-*"):
            if folder == self.job_dir or not folder.is_dir():
                continue
            owners = [p.name.removeprefix("owner-") for p in folder.glob("owner-*")]
            if owners and all(dead_owner(tag) for tag in owners):
                remove_tree(folder)
                removed += 1
        if removed:
            warn(f"removed {removed} job folder(s) that killed fiacli runs left in "
                 f"{os.path.abspath(self.manifest_path.parent)}")  # fmt: skip

    def _remove_own(self, units: list[Any]) -> None:
        for unit in units:
            if unit.rank == self.cluster.rank and unit.band is not None:
                folder = self.job_dir / f"{unit.job:05d}"
                for p in folder.glob(f"part-{unit.band.index:03d}.*"):
                    with contextlib.suppress(OSError):
                        p.unlink()
        with contextlib.suppress(OSError):
            (self.job_dir / f"progress-rank{self.cluster.rank}.json").unlink()

    def _split(
        self, probes: list[dict[str, Any]], announce: bool
    ) -> Callable[[int, int, int], bool]:
        threshold = self.batch.split_above * 1e6

        def split(job: int, height: int, width: int) -> bool:
            if self.areas is not None:  # one rank runs a scene's areas (each one is small)
                return False
            if not (self.batch.split_scene or height * width > threshold):
                return False
            why = split_supported(self.jobs[job].options, probes[job]["dtype"])
            if why is not None:
                if announce:
                    warn(f"{self.jobs[job].scene} is not split ({why}); one rank segments it")
                return False
            return True

        return split

    def _work(self, todo: list[SceneJob], probes: list[dict[str, Any]],
              seg: Any) -> tuple[list[dict[str, Any]], float, list[Any]]:  # fmt: skip
        from fiacli.app.areas import estimated_chips, run_areas
        from fiacli.app.pipeline import chip_and_overlap, segment_raster

        cl = self.cluster
        predictor = RunPredictor(seg.predictor)
        chip, overlap = chip_and_overlap(self.options, predictor)
        self.grid = (chip, overlap)
        sizes = [(j.index, probes[j.index]["height"], probes[j.index]["width"]) for j in todo]
        if self.areas is not None:  # balanced by the pixels of the areas' windows
            sizes = [(j, 1, max(1, sum(h * w for h, w in probes[j]["area_windows"])))
                     for j, _, _ in sizes]  # fmt: skip
        units = plan_units(sizes, cl.world, chip, overlap,
                           split=self._split(probes, announce=cl.is_main),
                           context=2 * self.options.open_px, parts=self.split_parts)  # fmt: skip
        mine = [u for u in units if u.rank == cl.rank]

        def unit_chips(u: Any) -> int:
            if self.areas is not None:
                return estimated_chips(probes[u.job]["area_windows"], chip, overlap)
            h, w = probes[u.job]["height"], probes[u.job]["width"]
            if u.band is not None:
                h = u.band.read[1] - u.band.read[0]
            return chips_of(h, w, chip, overlap)

        total = sum(unit_chips(u) for u in units)
        coarse = self._coarse_passes(units, seg.predictor)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if cl.is_main:  # who runs it: a later run may sweep the folder once this process ended
            (self.job_dir / f"owner-{owner_tag()}").touch()
        stop = self.job_dir / "stop"
        records: list[dict[str, Any]] = []
        busy = 0.0
        stopped = False
        want = {j.index: j for j in todo}
        with JobProgress(self.job_dir, cl, total, show=self.show) as progress:
            predictor.on_chips = progress.chips
            for n, unit in enumerate(mine, 1):
                job = want[unit.job]
                base = {"job": unit.job, "band": None if unit.band is None else unit.band.index,
                        "rank": cl.rank}  # fmt: skip
                if stopped or stop.exists():
                    records.append({**base, "status": "not run"})
                    continue
                t0 = time.perf_counter()
                try:
                    if self.areas is not None:
                        if self.show and cl.world == 1 and len(mine) > 1:
                            info(f"[{n}/{len(mine)}] {job.scene}")
                        result = run_areas(self._area_plan(job), predictor=predictor,
                                           model_info=self.model_info,
                                           show_progress=self.show and cl.world == 1,
                                           announce_notes=False)  # fmt: skip
                        records.append({**base, "status": "done", "result": result.to_dict()})
                    elif unit.band is None:
                        if self.show and cl.world == 1 and len(mine) > 1:
                            info(f"[{n}/{len(mine)}] {job.scene}")
                        result = segment_raster(
                            job.scene, self.texts, job.outputs, job.options,
                            predictor=predictor, model_info=self.model_info,
                            show_progress=self.show and cl.world == 1,
                        )  # fmt: skip
                        records.append({**base, "status": "done", "result": result.to_dict()})
                    else:
                        h, w = probes[unit.job]["height"], probes[unit.job]["width"]
                        vectors, probabilities = self._band_kinds(job)  # existing files: now
                        regions = coarse.get(unit.job)
                        if isinstance(regions, str):  # the coarse pass failed
                            raise FiacliError(regions)
                        rec = run_band(
                            job.scene, self.texts, job.options, unit.band, height=h, width=w,
                            chip=chip, overlap=overlap,
                            folder=self.job_dir / f"{unit.job:05d}", predictor=predictor,
                            model_info=self.model_info, vectors=vectors,
                            probabilities=probabilities,
                            coarse=None if regions is _REUSE_ONLY else regions,
                            reuse_only=regions is _REUSE_ONLY,
                        )  # fmt: skip
                        records.append({**base, "status": "part", "part": rec})
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    error = describe_error(exc)
                    if cl.world > 1:
                        error = f"rank {cl.rank}: {error}"
                    records.append({**base, "status": "failed", "error": error})
                    if self.batch.fail_fast:
                        stopped = True
                        with contextlib.suppress(OSError):
                            stop.touch()
                seconds = time.perf_counter() - t0
                records[-1]["seconds"] = round(seconds, 4)
                busy += seconds
                progress.unit_done(unit_chips(unit))
        return records, busy, units

    def _coarse_passes(self, units: list[Any], predictor: Any) -> dict[int, Any]:
        """``--scope scene`` on split scenes: the coarse pass over each whole scene, made once
        and sent to every rank, so that every band of a scene is cut by one region. The scenes'
        passes are spread over the ranks; a scene whose every part a killed run left reusable
        needs none. Per job: its regions (None: the scopes coincide), why the pass failed, or
        :data:`_REUSE_ONLY`."""
        from fiacli.app.pipeline import SceneRegion, scene_regions

        jobs = sorted({u.job for u in units if u.band is not None
                       and self.jobs[u.job].options.scope == "scene"})  # fmt: skip
        if not jobs:
            return {}
        cl = self.cluster
        mine = [j for j in jobs if self._parts_reusable(j, units)] if cl.is_main else None
        reused = cl.broadcast(mine, what="the coarse pass of --scope scene")  # rank 0 decides
        need = [j for j in jobs if j not in reused]
        found: dict[str, Any] = {}
        for j in need[cl.rank :: cl.world]:
            job = self.jobs[j]
            try:
                regions = scene_regions(job.scene, self.texts, job.options, predictor=predictor)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                where = f" (made by rank {cl.rank})" if cl.world > 1 else ""
                found[str(j)] = f"the coarse pass of --scope scene{where}: {describe_error(exc)}"
                continue
            found[str(j)] = None if regions is None else [r.to_json() for r in regions]
        for part in cl.gather(found, what="the coarse pass of --scope scene"):
            found.update(part)
        passes: dict[int, Any] = dict.fromkeys(reused, _REUSE_ONLY)
        for j, v in found.items():
            passes[int(j)] = v if v is None or isinstance(v, str) else [
                SceneRegion.from_json(r) for r in v]  # fmt: skip
        return passes

    def _band_kinds(self, job: SceneJob) -> tuple[bool, bool]:
        """What a part of ``job`` holds besides the mask: (vectors, probabilities)."""
        plan = plan_outputs(job.outputs, job.options)
        return bool(plan.vectors) or plan.preview is not None, plan.probabilities is not None

    def _parts_reusable(self, j: int, units: list[Any]) -> bool:
        """Every band of job ``j`` has a part a killed run of this job left reusable."""
        job = self.jobs[j]
        try:
            vectors, probabilities = self._band_kinds(job)
        except FiacliError:
            return False
        chip, overlap = self.grid
        folder = self.job_dir / f"{j:05d}"
        return all(
            reusable_part(folder, u.band, part_key(job.scene, self.texts, job.options, u.band,
                                                   chip, overlap, self.model_info, vectors,
                                                   probabilities)) is not None
            for u in units if u.job == j
        )  # fmt: skip

    def _rows(
        self, probes: list[dict[str, Any]], per_rank: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        by_job: dict[int, list[dict[str, Any]]] = {}
        for recs in per_rank:
            for r in recs:
                by_job.setdefault(r["job"], []).append(r)
        rows = []
        stopped = False
        for job, probe in zip(self.jobs, probes, strict=True):
            man = job.plan.manifest
            row: dict[str, Any] = {
                "scene": job.scene, "status": "failed", "chips": None, "objects": None,
                "seconds": None, "error": None, "note": None, "rank": None,
                "pixels": probe.get("height", 0) * probe.get("width", 0),
                "manifest": None if man is None else str(man),
            }  # fmt: skip
            recs = by_job.get(job.index, [])
            if probe["error"]:
                row["error"] = probe["error"]
            elif probe.get("no_areas"):
                note = "no area of interest overlaps it"
                if probe.get("leftover"):
                    note += "; the outputs of an earlier run are left as they were"
                row.update(status="skipped", note=note, manifest=None)
            elif probe["done"]:
                row.update(probe["done"], status="skipped")
            elif not recs or any(r["status"] == "not run" for r in recs):
                row["status"] = "not run"
                if any(r["status"] in ("done", "part") for r in recs):
                    row["error"] = "--fail-fast stopped the run before all its parts ran"
            elif any(r["status"] == "failed" for r in recs):
                row["error"] = next(r["error"] for r in recs if r["status"] == "failed")
                row["rank"] = next(r["rank"] for r in recs if r["status"] == "failed")
            elif recs[0]["status"] == "done":
                result = recs[0]["result"]
                row.update(_row_from_manifest(result), status="done", rank=recs[0]["rank"],
                           seconds=recs[0]["seconds"])  # fmt: skip
            else:
                t0 = time.perf_counter()
                try:
                    if stopped:
                        raise FiacliError("not assembled: --fail-fast")
                    payload = assemble(
                        job.scene, self.texts, job.options, job.plan, [r["part"] for r in recs],
                        chip=self.grid[0], overlap=self.grid[1],
                        model_info=self.model_info, world=self.cluster.world,
                    )  # fmt: skip
                    row.update(_row_from_manifest(payload), status="done",
                               rank=sorted({r["rank"] for r in recs}))  # fmt: skip
                    row["seconds"] = round(
                        max(r["seconds"] for r in recs) + time.perf_counter() - t0, 4
                    )
                    row["assembly_seconds"] = round(time.perf_counter() - t0, 4)
                    row["parts"] = len(recs)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    row["error"] = f"assembling: {describe_error(exc)}"
            if row["status"] == "failed" and self.batch.fail_fast:
                stopped = True
            rows.append(row)
        return rows

    def _payload(self, rows: list[dict[str, Any]], gathered: list[dict[str, Any]],
                 units: list[Any], probes: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        ranks = []
        for r, g in enumerate(gathered):
            mine = [u for u in units if u.rank == r]
            ranks.append({"rank": r, "units": len(mine), "pixels": int(sum(u.cost for u in mine)),
                          "seconds": round(g["busy"], 4)})  # fmt: skip
        secs = [x["seconds"] for x in ranks]
        mean = sum(secs) / len(secs) if secs else 0.0
        counts = {
            s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "not run")
        }
        return {
            "fiacli_version": __version__,
            "command": "segment",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model_info,
            "expressions": self.texts,
            "options": _json_roundtrip(self.options.record()),
            "batch": _json_roundtrip(asdict(self.batch)),
            **({} if self.areas is None else {"areas": _json_roundtrip(self.areas.record())}),
            "world_size": self.cluster.world,
            "scenes": rows,
            "ranks": ranks,
            "balance": round(max(secs) / mean, 4) if mean > 0 else None,
            "summary": {
                **counts,
                "scenes": len(rows),
                "seconds": round(time.perf_counter() - self.t_start, 4),
            },  # fmt: skip
        }


def _row_from_manifest(data: Mapping[str, Any]) -> dict[str, Any]:
    """chips / objects / seconds of a scene from its manifest or result."""
    per = data.get("per_expression") or []
    polygons = [p.get("polygons") for p in per]
    objects = None if any(p is None for p in polygons) or not polygons else int(sum(polygons))
    chips = data.get("chips") or {}
    timings = data.get("timings_s") or {}
    return {"chips": chips.get("total"), "objects": objects,
            "seconds": timings.get("total", timings.get("assembly"))}  # fmt: skip


def run_command(
    scenes: Sequence[str],
    expressions: Sequence[str],
    output: Sequence[PathLike] | None,
    options: SegmentOptions,
    batch: BatchOptions,
    *,
    model: str | None,
    device: str,
    precision: str,
    load: Callable[..., Any],
    as_json: bool = False,
    inputs: Sequence[PathLike | None] = (),
    areas: AreaOptions | None = None,
) -> BatchResult:
    """``fiacli segment`` over many scenes: run, then print the summary (or JSON) on rank 0.

    ``load(device, quiet)`` loads the model (on this rank's device), only if there is work."""
    from fiacli.app.named_models import resolve_model
    from fiacli.core.console import print_json

    identity = {**resolve_model(model).describe(), "precision": precision}
    cluster = Cluster.from_env()
    try:
        dev = cluster.device(device)
        result = segment_many(
            scenes, expressions, output, options, batch=batch, cluster=cluster,
            model=lambda: load(dev, not cluster.is_main), model_info=identity,
            show_progress=not as_json, inputs=[resolve_model(model).path, *inputs],
            areas=areas,
        )  # fmt: skip
    except FiacliError as exc:
        if cluster.world > 1 and not str(exc).startswith("rank "):
            raise type(exc)(f"rank {cluster.rank}: {exc}") from None
        raise
    finally:
        cluster.close()
    if cluster.is_main:
        if as_json:
            print_json(result.to_dict())
        else:
            print_summary(result)
    return result


def print_summary(result: BatchResult) -> None:
    """The table of the run on stdout: scene, chips, objects, seconds, status."""
    from rich.markup import escape
    from rich.table import Table

    from fiacli.core.console import console

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name, justify in (("scene", "left"), ("chips", "right"), ("objects", "right"),
                          ("seconds", "right"), ("status", "left")):  # fmt: skip
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    colours = {"done": "green", "skipped": "cyan", "failed": "red", "not run": "yellow"}
    for row in result.rows:
        status = row["status"]
        if row.get("error") or row.get("note"):
            status = f"{status}: {row.get('error') or row['note']}"
        secs = row.get("seconds")
        table.add_row(
            escape(str(row["scene"])),
            "-" if row.get("chips") is None else str(row["chips"]),
            "-" if row.get("objects") is None else str(row["objects"]),
            "-" if secs is None else f"{secs:.1f}",
            f"[{colours.get(row['status'], 'white')}]{escape(status)}[/]",
        )
    console.print(table)
    s = result.payload.get("summary", {})
    if s:
        console.print(
            f"{s['done']} done, {s['skipped']} skipped, {s['failed']} failed"
            + (f", {s['not run']} not run" if s.get("not run") else "")
            + f" in {s['seconds']:.1f} s; wrote {result.manifest}",
            highlight=False,
        )


__all__ = [
    "BATCH_FIELD_NAMES",
    "BatchOptions",
    "BatchResult",
    "SceneJob",
    "expand_scenes",
    "plan_jobs",
    "print_summary",
    "render",
    "segment_many",
    "wants_batch",
]

"""The options of a ``segment`` run, declared once.

:class:`SegmentOptions` is the one declaration: ``fiacli segment`` maps its command-line options
onto its fields (a test checks that each field has an option and each option a field),
:func:`fiacli.app.pipeline.segment_raster` and :meth:`fiacli.app.api.Segmenter.segment` take it,
and an unknown keyword is refused at once instead of being forwarded. :func:`preflight` is every
check that needs no model; the CLI calls it before loading one, and ``segment_raster`` calls it
too, so a Python caller gets the same errors.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from fiacli.core.errors import UsageError
from fiacli.core.io import check_output_path, refuse_overwriting_inputs
from fiacli.geo.choices import BLENDS, ON_READ_ERRORS, VECTOR_DRIVERS, Blend, OnReadError

Scope = Literal["chip", "scene"]
SCOPES: tuple[str, ...] = get_args(Scope)
RASTER_SUFFIXES = (".tif", ".tiff")
MIN_CHIP = 16
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SegmentOptions:
    """Every knob of a segment run (the ``fiacli segment`` options, by the same names).

    ``chip`` defaults to the model's training size and ``overlap`` to a fifth of the chip;
    ``min_area`` is in m², ``simplify`` in CRS units, ``open_px`` in pixels.
    """

    chip: int | None = None
    overlap: int | None = None
    blend: Blend = "cosine"
    batch_size: int | str = "auto"  # "auto": the most that fit a CUDA device, 4 on CPU
    bands: tuple[int, ...] | None = None
    resolution: float | None = None
    scope: Scope = "chip"
    threshold: float = 0.5
    probabilities: Path | None = None
    preview: Path | None = None
    cog: bool = False
    min_area: float = 0.0
    simplify: float = 0.0
    open_px: int = 0
    dst_crs: str | None = None
    allow_ungeoreferenced: bool = False
    overwrite: bool = False
    manifest: bool = True
    threads: int | None = None  # reading, writing and vectorising threads; None: every CPU
    on_read_error: OnReadError = "fail"  # a damaged window: fail naming it, or skip as nodata

    def __post_init__(self) -> None:
        from fiacli.geo.raster import parse_bands  # here: the CLI imports this module for --help

        # accept what a caller naturally has: "4,3,2" or a list for bands, str for paths
        object.__setattr__(self, "bands", parse_bands(self.bands))
        size = self.batch_size
        if isinstance(size, str) and size.strip().lower() != "auto":
            try:
                object.__setattr__(self, "batch_size", int(size))
            except ValueError:
                raise UsageError(
                    f"--batch-size takes a number of chips or auto, not {size!r}"
                ) from None
        elif isinstance(size, str):
            object.__setattr__(self, "batch_size", "auto")
        for name in ("probabilities", "preview"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @classmethod
    def build(cls, base: SegmentOptions | None = None, /, **changes: Any) -> SegmentOptions:
        """``base`` (default: the defaults) with ``changes``, checked; unknown names are refused."""
        unknown = sorted(set(changes) - set(FIELD_NAMES))
        if unknown:
            raise UsageError(
                f"unknown segment option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; known: {', '.join(FIELD_NAMES)}"
            )
        options = replace(base, **changes) if base is not None else cls(**changes)
        options.check()
        return options

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SegmentOptions:
        """The fields found in ``values`` (e.g. a command's parameters), other keys ignored."""
        return cls.build(**{name: values[name] for name in FIELD_NAMES if name in values})

    def check(self) -> None:
        """Refuse impossible values (usage errors, exit code 2)."""
        if self.on_read_error not in ON_READ_ERRORS:
            known = " or ".join(ON_READ_ERRORS)
            raise UsageError(f"unknown --on-read-error {self.on_read_error!r}; use {known}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise UsageError("--batch-size must be at least 1 (or auto)")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 0):
            raise UsageError("--threads must be at least 1 (0: every CPU)")
        if not 0.0 <= self.threshold < 1.0:  # NaN fails too
            raise UsageError("--threshold must be in [0, 1)")
        if self.scope not in SCOPES:
            raise UsageError(f"unknown scope {self.scope!r}; use {' or '.join(SCOPES)}")
        if self.blend not in BLENDS:
            raise UsageError(f"unknown blend {self.blend!r}; use {', '.join(BLENDS)}")
        for name in ("min_area", "simplify", "open_px"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{_flag(name)} must be a finite number >= 0, not {value}")
        if self.resolution is not None and not (
            math.isfinite(self.resolution) and self.resolution > 0
        ):
            raise UsageError(
                f"--resolution must be a positive number of metres, not {self.resolution}"
            )
        if self.chip is not None and self.chip < MIN_CHIP:
            raise UsageError(f"--chip must be at least {MIN_CHIP} pixels, not {self.chip}")
        if self.overlap is not None:
            if self.overlap < 0:
                raise UsageError(f"--overlap cannot be negative, not {self.overlap}")
            if self.chip is not None and self.overlap >= self.chip:
                raise UsageError(f"--overlap ({self.overlap}) must be smaller than --chip")
        if self.dst_crs is not None:
            from rasterio.crs import CRS

            try:
                CRS.from_user_input(self.dst_crs)
            except Exception:
                raise UsageError(f"--dst-crs: unknown CRS {self.dst_crs!r}") from None

    def record(self) -> dict[str, Any]:
        """The options as the manifest stores them (what changes the result, not where it goes)."""
        skip = ("overwrite", "manifest", "probabilities", "preview", "threads")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["bands"] = list(self.bands) if self.bands else None
        return out


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SegmentOptions))


def _flag(name: str) -> str:
    return {"open_px": "open"}.get(name, name.replace("_", "-"))


@dataclass
class Outputs:
    """Where a run writes, sorted by kind."""

    mask: Path | None
    vectors: list[Path]
    probabilities: Path | None
    manifest: Path | None
    preview: Path | None = None

    def every(self) -> list[Path]:
        """Every file the run writes, the manifest included."""
        return [*self.finals(), *([self.manifest] if self.manifest else [])]

    def finals(self) -> list[Path]:
        """Every output file except the manifest (written last, from the others' results)."""
        kept = (self.mask, self.probabilities, *self.vectors, self.preview)
        return [p for p in kept if p is not None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mask": str(self.mask) if self.mask else None,
            "probabilities": str(self.probabilities) if self.probabilities else None,
            "vectors": [str(v) for v in self.vectors],
            "preview": str(self.preview) if self.preview else None,
            "manifest": str(self.manifest) if self.manifest else None,
        }


def plan_outputs(output: PathLike | Sequence[PathLike], options: SegmentOptions) -> Outputs:
    """Sort outputs by extension and refuse, before any work, what cannot be written (with
    ``overwrite``: what exists is checked later, after the inputs, by :func:`check_existing`)."""
    from fiacli.geo.preview import check_preview_path

    paths = [Path(output)] if isinstance(output, (str, os.PathLike)) else [Path(p) for p in output]
    if not paths and options.probabilities is None and options.preview is None:
        raise UsageError("no output given: pass -o OUT.gpkg, OUT.tif, …")
    known = ", ".join((*RASTER_SUFFIXES, *VECTOR_DRIVERS))
    mask, vectors = None, []
    for p in paths:
        suffix = p.suffix.lower()
        if suffix in RASTER_SUFFIXES:
            if mask is not None:
                raise UsageError(f"two mask rasters given ({mask}, {p}); give one .tif")
            mask = p
        elif suffix in VECTOR_DRIVERS:
            vectors.append(p)
        else:
            raise UsageError(f"unknown output extension {suffix or '(none)'!r} in {p}; use {known}")
    prob = options.probabilities
    if prob is not None and prob.suffix.lower() not in RASTER_SUFFIXES:
        raise UsageError(f"--probabilities writes a GeoTIFF; give a .tif path, not {prob}")
    look = check_preview_path(options.preview) if options.preview is not None else None
    if options.cog and mask is None and prob is None:
        raise UsageError("--cog needs a .tif output or --probabilities")
    first = paths[0] if paths else prob or look
    assert first is not None
    man = first.with_name(f"{first.stem}.manifest.json") if options.manifest else None
    every = [p for p in (mask, *vectors, prob, look, man) if p is not None]
    resolved = [p.resolve() for p in every]
    if len(set(resolved)) != len(resolved):
        raise UsageError("the same output path is given twice")
    outputs = Outputs(mask, vectors, prob, man, look)
    check_existing(outputs, overwrite=options.overwrite)
    return outputs


def clean_expressions(expressions: str | Sequence[str]) -> list[str]:
    """Stripped expressions; an empty one is a usage error, not a silent no-op."""
    items = [expressions] if isinstance(expressions, str) else list(expressions)
    if not items:
        raise UsageError("no expression given: describe the object, e.g. 'the white van'")
    out = []
    for i, text in enumerate(items, 1):
        text = " ".join(str(text).split())
        if not text:
            where = "" if len(items) == 1 else f" {i}"
            raise UsageError(f"expression{where} is empty")
        out.append(text)
    return out


@dataclass
class Plan:
    """What :func:`preflight` established: the cleaned expressions and the outputs."""

    expressions: list[str]
    outputs: Outputs


def preflight(
    scene: PathLike,
    expressions: str | Sequence[str],
    output: PathLike | Sequence[PathLike],
    options: SegmentOptions,
    *,
    inputs: Sequence[PathLike | None] = (),
) -> Plan:
    """Every check of a run that needs no model: options, expressions, outputs, the scene.

    No output may be one of the inputs, -f or not: the scene and every file GDAL reads with it
    (a VRT's sources, .ovr, .aux.xml), and ``inputs`` (the model, an expressions file)."""
    from fiacli.geo.raster import open_scene

    options.check()
    texts = clean_expressions(expressions)
    # an output that is an input is refused before one that exists: -f would not help it
    outputs = plan_outputs(output, replace(options, overwrite=True))
    refuse_overwriting_inputs(outputs.every(), [scene, *inputs])
    with warnings.catch_warnings():  # the run itself shows the scene's warnings once
        warnings.simplefilter("ignore")
        probe = open_scene(
            scene, bands=options.bands, resolution=options.resolution, stretch=False,
            allow_ungeoreferenced=options.allow_ungeoreferenced,
        )  # fmt: skip
    with probe:
        refuse_overwriting_inputs(outputs.every(), probe.src.files)
        if probe.crs is None and (options.min_area > 0 or options.dst_crs is not None):
            raise UsageError("--min-area and --dst-crs need a georeferenced scene")
    check_existing(outputs, overwrite=options.overwrite)
    return Plan(texts, outputs)


def check_existing(outputs: Outputs, *, overwrite: bool) -> None:
    """Refuse an output that exists, unless ``overwrite``; its folder must exist and be
    writable either way."""
    for p in outputs.every():
        check_output_path(p, overwrite=overwrite)


__all__ = [
    "FIELD_NAMES",
    "SCOPES",
    "Outputs",
    "Plan",
    "check_existing",
    "SegmentOptions",
    "clean_expressions",
    "plan_outputs",
    "preflight",
]

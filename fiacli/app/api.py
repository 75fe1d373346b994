"""fiacli as a Python library, with the command line's defaults; the CLI calls these functions.

    from fiacli import load_model, segment, parse

    model = load_model()                     # the bundled demo model (one note on stderr)
    result = model.segment("scene.tif", "the ship", "ship.gpkg", preview="ship.png")
    print(result.per_expression)             # pixels and polygons found per expression

    segment("scene.tif", "the ship", "ship.gpkg", model="my-model")   # one call, model cached
    model.segment("scene.tif", "the van on the left", "vans.gpkg", aoi=parcels)  # per feature
    model.segment_many(["a.tif", "tiles/*.tif"], "the ship", "out/{stem}.gpkg")  # a summary
    probs = model.predict(rgb, "the ship")   # one in-memory RGB image -> probability map
    parse("the white van on the left road")  # how the expression is read (fiacli.text.parsing)

``model`` is anything ``fiacli segment -m`` takes: a checkpoint path, a name registered with
``fiacli models add``, a bundled name, or ``None`` for the bundled demo model. ``aoi=`` (a vector
file, a GeoDataFrame, shapely geometries) or ``bbox=`` answer the expression inside each area of
interest, as ``fiacli segment --aoi/--bbox`` does (:mod:`fiacli.app.areas`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fiacli.app import pipeline
from fiacli.app.areas import AREA_FIELD_NAMES, AreaOptions, AreaPlan, AreaResult, segment_areas
from fiacli.app.batch import BatchOptions, BatchResult
from fiacli.app.named_models import ResolvedModel, resolve_model
from fiacli.app.pipeline import SegmentResult
from fiacli.app.segment_options import SegmentOptions, clean_expressions
from fiacli.core.console import info
from fiacli.core.errors import FiacliError
from fiacli.text.parsing import parse

__all__ = ["AreaOptions", "AreaResult", "BatchOptions", "BatchResult", "Segmenter",
           "SegmentOptions", "SegmentResult", "load_model", "parse", "segment"]  # fmt: skip

PathLike = str | os.PathLike[str]


class Segmenter:
    """A loaded model and the defaults of ``fiacli segment``; reuse it for many scenes."""

    def __init__(
        self,
        predictor: pipeline.ChipPredictor,
        model: ResolvedModel | None = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
    ):
        self.predictor = predictor
        self.model = model
        self.precision = precision
        self.device = str(getattr(predictor, "device", device))

    @property
    def model_info(self) -> dict[str, Any]:
        """What the run manifest records about the model."""
        where = self.model.describe() if self.model else {"path": None}
        return {**where, "precision": self.precision, "device": self.device}

    def segment(
        self,
        scene: PathLike,
        expressions: str | Sequence[str],
        output: PathLike | Sequence[PathLike] | None = None,
        options: SegmentOptions | None = None,
        *,
        areas: AreaOptions | AreaPlan | None = None,
        show_progress: bool = False,
        **changes: Any,
    ) -> SegmentResult:
        """Segment ``expressions`` in ``scene``; see :func:`fiacli.app.pipeline.segment_raster`.

        ``output`` defaults to ``<scene name>.gpkg`` in the current folder, like the CLI;
        ``options`` is a :class:`SegmentOptions`, and keywords change it (``chip``, ``scope``,
        ``threshold``, ``min_area``, ``preview="out.png"``, ``overwrite`` …: the ``fiacli
        segment`` options by their Python names); an unknown keyword is an error.

        Areas of interest: ``aoi=`` (a vector file, a GeoDataFrame or GeoSeries, a shapely
        geometry or a list of them) or ``bbox=(minx, miny, maxx, maxy)``, with ``aoi_layer``,
        ``aoi_where``, ``aoi_crs``, ``bbox_crs``, ``expression_field``, ``keep_fields`` and
        ``crop`` as keywords or in ``areas`` (an :class:`AreaOptions`); the run then answers
        each feature as one picture (:func:`fiacli.app.areas.segment_areas`) and returns an
        :class:`AreaResult`, whose ``areas`` lists every feature.
        """
        if output is None:
            output = [Path(Path(os.fspath(scene)).stem + ".gpkg")]
        if not isinstance(areas, AreaPlan):  # a plan (from preflight_areas) holds its options
            area_changes = {k: changes.pop(k) for k in list(changes) if k in AREA_FIELD_NAMES}
            areas = AreaOptions.build(areas, **area_changes)
        if isinstance(areas, AreaPlan) or areas.active:
            return segment_areas(
                scene, expressions, output, options, areas, predictor=self.predictor,
                model_info=self.model_info, show_progress=show_progress, **changes,
            )  # fmt: skip
        return pipeline.segment_raster(
            scene, expressions, output, options, predictor=self.predictor,
            model_info=self.model_info, show_progress=show_progress, **changes,
        )  # fmt: skip

    def segment_many(
        self,
        scenes: Sequence[PathLike],
        expressions: str | Sequence[str],
        output: PathLike | Sequence[PathLike] | None = None,
        options: SegmentOptions | None = None,
        **kwargs: Any,
    ) -> BatchResult:
        """Segment every scene (globs too) with this model: one output set and manifest each,
        ``output`` a template (``"out/{stem}.gpkg"``) or a folder; failed scenes are rows of
        the result, complete ones are skipped. See :func:`fiacli.app.batch.segment_many`
        (``batch=BatchOptions(...)``, the segment and area options as keywords: ``aoi=`` runs
        each scene's areas of interest); under torchrun the scenes are spread over the ranks."""
        from fiacli.app.batch import segment_many

        return segment_many(scenes, expressions, output, options, model=self, **kwargs)

    def predict(self, image: np.ndarray, expression: str) -> np.ndarray:
        """Probability of the referred object for one RGB image in memory (``H×W×3`` or
        ``3×H×W`` uint8) -> ``H×W`` float32. For a whole GeoTIFF use :meth:`segment`, which
        tiles it into chips of the model's size."""
        array = np.asarray(image)
        if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
            raise FiacliError(f"expected one RGB image (H, W, 3) or (3, H, W); got {array.shape}")
        chw = array if array.shape[0] == 3 and array.shape[-1] != 3 else array.transpose(2, 0, 1)
        encoded = self.predictor.encode(clean_expressions(expression)[0])
        return self.predictor.predict(chw[None], encoded)[0]

    def __repr__(self) -> str:
        name = self.model.name or self.model.path if self.model else "custom predictor"
        return f"Segmenter({name!s}, device={self.device}, precision={self.precision})"


def load_model(
    model: PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    quiet: bool = False,
) -> Segmenter:
    """Load a checkpoint (path, registered or bundled name; ``None``: the demo model).

    With no model, one line on stderr says the demo model is used and what to use for real
    imagery (``quiet=True`` silences it).
    """
    resolved = resolve_model(model)
    if resolved.default and not quiet:
        from fiacli.app.demo import DEMO_NOTE

        info(DEMO_NOTE)
    predictor = pipeline.load_predictor(resolved.path, device=device, precision=precision)
    return Segmenter(predictor, resolved, device=device, precision=precision)


_CACHE: dict[tuple[Any, ...], Segmenter] = {}


def _cached(model: PathLike | None, device: str, precision: str) -> Segmenter:
    """The last model loaded with these settings (loading takes seconds; segmenting is often
    repeated in a notebook)."""
    resolved = resolve_model(model)
    path = resolved.path
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    key = (str(path.resolve()), stamp, device, precision)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_model(model, device=device, precision=precision)
    return _CACHE[key]


def segment(
    scene: PathLike,
    expressions: str | Sequence[str],
    output: PathLike | Sequence[PathLike] | None = None,
    options: SegmentOptions | None = None,
    *,
    model: PathLike | None = None,
    device: str = "auto",
    precision: str = "fp32",
    **changes: Any,
) -> SegmentResult:
    """``fiacli segment`` in one call: load ``model`` (cached) and run :meth:`Segmenter.segment`."""
    return _cached(model, device, precision).segment(scene, expressions, output, options, **changes)

"""Inference on image chips: a checkpoint, an expression, numpy in and numpy out.

FIANet fuses the text inside the backbone, so nothing image-side can be cached; what is cached is
the expression: :meth:`RefSegPredictor.encode` parses it and runs the text encoder once, and
:meth:`RefSegPredictor.predict` reuses the result for every chip of a scene.

    predictor = RefSegPredictor.from_checkpoint("model.safetensors")
    encoded = predictor.encode("the white van on the left road")
    probs = predictor.predict(chips, encoded)        # (B, 3, H, W) uint8 → (B, H, W) float32
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fiacli.core.device import autocast, resolve_device
from fiacli.core.errors import FiacliError


@dataclass(frozen=True)
class EncodedExpression:
    """An expression parsed with the checkpoint's settings and run through the text encoder.

    Attributes:
        text: the expression as given.
        parsed: the ``fiacli.text.parsing.ParsedExpression`` (token ids and the three masks).
        features: ``TextFeatures`` for a batch of one, on the predictor's device.
    """

    text: str
    parsed: Any
    features: Any


ENCODE_BATCH = 64  # expressions per text-encoder call in encode_many


def _say_cut(parsed: list[Any], budget: int) -> None:
    """One warning when expressions were longer than the token budget (the model never sees
    the rest): the cut used to be silent in segment."""
    cut = [p for p in parsed if getattr(p, "truncated", None)]
    if not cut:
        return
    from fiacli.core.console import clip, warn

    first = cut[0]
    which = f"{clip(first.text, 80)!r}" if len(cut) == 1 else (
        f"{len(cut)} expressions, e.g. {clip(first.text, 80)!r}")  # fmt: skip
    warn(f"cut to {budget} tokens: {which} lost {clip(first.truncated, 60)!r}")


class RefSegPredictor:
    """Foreground probabilities for chips of an image, given one encoded expression.

    Args:
        model: a FIANet (put in eval mode and moved to ``device`` here).
        meta: the checkpoint metadata (its ``parse`` settings are used by :meth:`encode`).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (fp16 needs CUDA), applied with autocast.
    """

    def __init__(
        self,
        model: Any,
        meta: dict[str, Any] | None = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
    ):
        self.device = resolve_device(device)
        autocast(self.device, precision)  # validates the precision up front
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.meta = meta or {}
        self.image_size: int = int(model.config.image_size)
        self._settings: Any = None

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, device: str = "auto", precision: str = "fp32"
    ) -> RefSegPredictor:
        """Load a fiacli checkpoint (``fiacli convert`` turns released .pth files into one)."""
        from fiacli.models.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path)
        return cls(model, meta, device=device, precision=precision)

    @property
    def parse_settings(self) -> Any:
        """The checkpoint's ``ParseSettings`` (how its training text was parsed)."""
        if self._settings is None:
            from fiacli.text.parsing import ParseSettings

            self._settings = ParseSettings.from_checkpoint_meta(self.meta)
        return self._settings

    def encode(self, expression: str, *, drop_position: bool = False) -> EncodedExpression:
        """Parse ``expression`` as the checkpoint was trained and run the text encoder once.

        ``drop_position`` removes the spatial-position words (``strip_position``): useful
        when a chip is only part of the scene, so "on the left" no longer holds in it.
        """
        from fiacli.models.text_encoder import TextBatch
        from fiacli.text.parsing import parse, strip_position

        text = strip_position(expression, self.parse_settings) if drop_position else expression
        parsed = parse(text, self.parse_settings)
        _say_cut([parsed], self.parse_settings.token_length)
        batch = TextBatch.from_parsed([parsed]).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self.model.encode_text(batch)
        return EncodedExpression(expression, parsed, features)

    def encode_many(
        self,
        expressions: list[str],
        *,
        drop_position: bool = False,
        batch_size: int = ENCODE_BATCH,
        on_batch: Any = None,
    ) -> list[EncodedExpression]:
        """:meth:`encode` for many expressions: parsed with the tokenizer and tagger loaded
        once, run through the text encoder ``batch_size`` at a time (``on_batch(n)`` after
        each), and one warning for all the expressions cut to the token budget."""
        from fiacli.models.text_encoder import TextBatch
        from fiacli.text.parsing import parse_many, strip_position

        settings = self.parse_settings
        texts = [strip_position(e, settings) if drop_position else e for e in expressions]
        parsed = parse_many(texts, settings)
        _say_cut(parsed, settings.token_length)
        out: list[EncodedExpression] = []
        for start in range(0, len(parsed), batch_size):
            chunk = parsed[start : start + batch_size]
            batch = TextBatch.from_parsed(chunk).to(self.device)
            with torch.inference_mode(), autocast(self.device, self.precision):
                features = self.model.encode_text(batch)
            out += [
                EncodedExpression(expressions[start + k], p, features[k])
                for k, p in enumerate(chunk)
            ]
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def predict(self, chips: np.ndarray, encoded: EncodedExpression) -> np.ndarray:
        """``(B, 3, H, W)`` uint8 RGB → ``(B, H, W)`` float32 probability of the referred object.

        Chips of any size work (the network pads internally); the model was trained at
        ``image_size``, so chips of about that size give the results it was evaluated on.
        """
        array = np.asarray(chips)
        if array.ndim != 4 or array.shape[1] != 3:
            raise FiacliError(f"chips must be (B, 3, H, W) RGB; got shape {array.shape}")
        if array.dtype != np.uint8:
            raise FiacliError(f"chips must be uint8 in [0, 255]; got {array.dtype}")
        if array.shape[0] == 0:
            return np.zeros((0, *array.shape[2:]), dtype=np.float32)
        with torch.inference_mode(), autocast(self.device, self.precision):
            image = self.model.preprocess(torch.from_numpy(np.ascontiguousarray(array)))
            logits = self.model(image, encoded.features)
            probs = logits.float().softmax(dim=1)[:, 1]
        return probs.cpu().numpy().astype(np.float32, copy=False)

    def predict_tensor(self, chips: torch.Tensor, encoded: EncodedExpression) -> torch.Tensor:
        """:meth:`predict` for chips already on the device (``(B, 3, H, W)`` uint8 tensor):
        the ``(B, H, W)`` float32 probabilities stay there (no copy back, no synchronisation),
        for ``segment`` to blend and threshold on the device."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            image = self.model.preprocess(chips)
            logits = self.model(image, encoded.features)
            return logits.float().softmax(dim=1)[:, 1]

    def auto_batch_size(self, chip: int, encoded: EncodedExpression) -> int | None:
        """``--batch-size auto``: the largest batch of ``chip``-pixel chips whose forward pass
        fits in the free memory of a CUDA device (None on CPU: the pipeline's default)."""
        if self.device.type != "cuda":
            return None
        from fiacli.app.device_stream import measure_batch_size

        return measure_batch_size(self, chip, encoded)

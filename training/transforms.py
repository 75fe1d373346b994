"""Sample transforms (whole-dict, torchgeo style) and the resizing helpers the metrics rely on.

Training resizes to 480×480 (docs/recipe.md): the image bilinearly, the mask with nearest
neighbour. Nearest
here samples pixel centres (``nearest-exact``), as PIL's NEAREST does, so a mask resized for the
metric (docs/metrics.md: "ground truth resized with nearest neighbour") matches the released
evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Sample = dict[str, Any]


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(image: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 (…, 3, H, W) image; returns uint8."""
    h, w = _hw(size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(
        batched.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out.squeeze(0)


def resize_mask(mask: torch.Tensor | np.ndarray, size: int | Sequence[int]) -> Any:
    """Nearest-neighbour (pixel-centre) resize of a (…, H, W) mask; keeps type and dtype."""
    h, w = _hw(size)
    is_numpy = isinstance(mask, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(mask)) if is_numpy else mask
    if tuple(t.shape[-2:]) != (h, w):
        lead = t.shape[:-2]
        flat = t.reshape(1, -1, *t.shape[-2:]).to(torch.uint8)
        t = F.interpolate(flat, size=(h, w), mode="nearest-exact").to(t.dtype).reshape(*lead, h, w)
    return t.numpy() if is_numpy else t


def resize_logits(logits: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) logits (align_corners=True, like the decoder's last step),
    for scoring a 480² prediction at the original resolution (``--full-res``)."""
    h, w = _hw(size)
    if tuple(logits.shape[-2:]) == (h, w):
        return logits
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)


class Compose:
    """Apply transforms in order to a sample dict."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize ``image`` (bilinear) and ``mask`` (nearest) to ``size``.

    With ``keep_full_mask`` the original mask is kept as ``mask_full`` for ``--full-res`` scoring
    (then batch with batch size 1 or a collate that keeps lists: sizes differ between samples).
    """

    def __init__(self, size: int | Sequence[int] = 480, *, keep_full_mask: bool = False):
        self.size = _hw(size)
        self.keep_full_mask = keep_full_mask

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = resize_image(sample["image"], self.size)
        if "mask" in sample:
            if self.keep_full_mask:
                out["mask_full"] = sample["mask"]
            out["mask"] = resize_mask(sample["mask"], self.size)
        return out

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class BoxErase:
    """RMSIN's RRSIS-D augmentation (docs/recipe.md): in a fixed random ``fraction`` of the training
    samples,
    black out ``boxes`` (min, max) random ``box_size``-pixel squares of the image.

    Which samples are erased is fixed from ``seed`` and the sample's ``index``: with
    ``num_samples`` exactly round(fraction·n) indices are chosen once; without it (the dataset
    is not built yet) each index is chosen with probability ``fraction``, the same in every epoch
    and worker. Where the boxes fall is drawn anew on every call from torch's generator, which
    DataLoader seeds per worker, so runs are reproducible under ``torch.manual_seed``. It acts on
    the image as loaded, so put it before :class:`Resize` (boxes are in original pixels). The mask
    is left unchanged: the target is still the whole object.
    """

    def __init__(
        self,
        fraction: float = 0.2,
        *,
        num_samples: int | None = None,
        boxes: tuple[int, int] = (20, 60),
        box_size: int = 32,
        seed: int = 0,
    ):
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if not 0 <= boxes[0] <= boxes[1]:
            raise ValueError(f"boxes must be (min, max) with 0 <= min <= max, got {boxes}")
        self.fraction = fraction
        self.seed = seed
        self.boxes = boxes
        self.box_size = box_size
        self.indices: frozenset[int] | None = None
        if num_samples is not None:
            k = round(fraction * num_samples)
            perm = np.random.default_rng(seed).permutation(num_samples)
            self.indices = frozenset(perm[:k].tolist())

    def chosen(self, index: int) -> bool:
        """Whether sample ``index`` is one of the erased ones (fixed for the whole run)."""
        if self.indices is not None:
            return index in self.indices
        return bool(np.random.default_rng([self.seed, index]).random() < self.fraction)

    def __call__(self, sample: Sample) -> Sample:
        if not self.chosen(int(sample["index"])):
            return sample
        image = sample["image"].clone()
        h, w = image.shape[-2:]
        n = int(torch.randint(self.boxes[0], self.boxes[1] + 1, ()).item())
        ys = torch.randint(0, max(1, h - self.box_size + 1), (n,)).tolist()
        xs = torch.randint(0, max(1, w - self.box_size + 1), (n,)).tolist()
        for y, x in zip(ys, xs, strict=True):
            image[..., y : y + self.box_size, x : x + self.box_size] = 0
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return f"BoxErase(fraction={self.fraction}, boxes={self.boxes}, box_size={self.box_size})"


def train_transform(
    image_size: int = 480,
    *,
    box_erasing: float = 0.0,
    seed: int = 0,
    num_samples: int | None = None,
) -> Compose:
    """The released training pipeline: optional box erasing (RRSIS-D: 0.2), then resize."""
    steps: list[Callable[[Sample], Sample]] = []
    if box_erasing > 0:
        steps.append(BoxErase(box_erasing, num_samples=num_samples, seed=seed))
    steps.append(Resize(image_size))
    return Compose(steps)


def eval_transform(image_size: int = 480, *, keep_full_mask: bool = False) -> Compose:
    """Evaluation: resize image and mask to the model's input size (docs/metrics.md: at 480²)."""
    return Compose([Resize(image_size, keep_full_mask=keep_full_mask)])

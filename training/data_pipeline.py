"""What a training run feeds the model: datasets, cached parses, text features, loss, checkpoints.

This module is where the trainer meets the rest of fiacli (datasets, parsing, models, losses), so
``loop.py`` only deals with steps, epochs and state. Expressions are parsed once per run (cached in
the run folder, as the paper parses offline); with a frozen text encoder their features are also
computed once and looked up per batch, which is most of the text cost of a CPU run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from fiacli.core.console import info
from fiacli.core.errors import FiacliError
from fiacli.training.distributed import DistInfo, barrier

# Text features of a frozen encoder are kept in memory up to this size; beyond, they are computed
# per batch (RRSIS-D with bert-base would need ~2.4 GB).
MAX_TEXT_CACHE_BYTES = 1 << 30


class WithText(Dataset):
    """A dataset's samples plus ``text_index``: the row of the sample's expression in the run's
    table of unique expressions (parses and cached features are looked up by it).

    With ``seed`` set, each sample's random augmentation draws from a generator seeded by
    (seed, epoch, index) instead of the process's global one: the same sample gets the same
    boxes whatever the number of loader workers and after ``--resume`` mid-epoch, and loading
    never disturbs the global RNG that dropout and drop-path use.
    """

    def __init__(self, base: Any, text_index: Sequence[int], *, seed: int | None = None):
        self.base = base
        self.text_index = list(text_index)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.seed is None:
            sample = self.base[index]
        else:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(state[0]) << 32 | int(state[1]))
                sample = self.base[index]
        sample["text_index"] = self.text_index[index]
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default collate, plus ``ids`` (ref ids, to name samples in error messages)."""
    batch = default_collate(samples)
    batch["ids"] = [s["ref_id"] for s in samples]
    return batch


@dataclass
class RunData:
    """Datasets, text tables and loss of one run (see :func:`build_run_data`)."""

    train: WithText
    val: WithText | None
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    parse_settings: Any
    text: Any  # TextBatch of every unique expression (train + val), row = text_index
    expressions: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    text_features: Any = None  # TextFeatures of every row when the encoder is frozen and small
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] = collate

    def cache_text_features(self, model: nn.Module, device: torch.device) -> None:
        """Encode every expression once when the text encoder is frozen (and the table fits)."""
        if any(p.requires_grad for p in model.text_encoder.parameters()):
            return
        n, length = self.text.input_ids.shape
        width = model.config.text_dim
        if 3 * n * length * width * 4 > MAX_TEXT_CACHE_BYTES:
            return
        model.text_encoder.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, n, 256):
                chunks.append(model.encode_text(self.text[start : start + 256].to(device)))
        from fiacli.models.text_encoder import TextFeatures

        self.text_features = TextFeatures(
            **{k: torch.cat([getattr(c, k) for c in chunks]) for k in chunks[0].__dict__}
        )

    def text_for(self, index: torch.Tensor, device: torch.device) -> Any:
        """Cached features (frozen encoder) or the token batch of rows ``index``."""
        if self.text_features is not None:
            return self.text_features[index.to(self.text_features.context.device)].to(device)
        return self.text[index].to(device)

    def save_weights(self, model: nn.Module, path: Path, *, provenance: dict[str, Any]) -> None:
        from fiacli.models import save_checkpoint

        meta = {
            "parse": self.parse_settings.to_dict(),
            "provenance": {**self.provenance, **provenance},
        }
        save_checkpoint(path, model, meta, overwrite=True)


def model_inputs(
    batch: dict[str, Any], data: RunData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(normalised float image, long target, text) of a collated batch, on ``device``."""
    image = data.model.preprocess(batch["image"].to(device, non_blocking=True))
    target = batch["mask"].to(device, non_blocking=True).long()
    return image, target, data.text_for(batch["text_index"], device)


def run_parse_settings(config: Any, tokenizer: str) -> Any:
    """How a training run parses its expressions: the class vocabulary of the run's dataset, the
    run's token length and parse mode, and the text encoder's ``tokenizer``."""
    from fiacli.text.parsing import ParseSettings

    return ParseSettings.for_dataset(
        config.dataset,
        mode=config.parse_mode,
        token_length=config.token_length,
        tokenizer=tokenizer,
    )


def parse_table(expressions: list[str], settings: Any, cache: Path, dist: DistInfo) -> Any:
    """Parse every unique expression once (rank 0 writes the cache, the others read it)."""
    from fiacli.models.text_encoder import TextBatch
    from fiacli.text.parsing import parse_cached

    if dist.is_main:
        parsed = parse_cached(expressions, settings, cache)
    barrier()
    if not dist.is_main:
        parsed = parse_cached(expressions, settings, cache)
    return TextBatch.from_parsed(parsed[e] for e in expressions)


def build_model(config: Any) -> nn.Module:
    from fiacli.models import create_model

    overrides = {
        "image_size": config.image_size,
        "num_tmem": config.num_tmem,
        "drop_path_rate": config.drop_path,
        "freeze_text_encoder": config.freeze_text_encoder,
        **config.model,
    }
    return create_model(
        config.preset,
        pretrained=config.pretrained,
        backbone_weights=config.backbone_weights,
        text_encoder=config.text_encoder,
        **overrides,
    )


def build_loss(config: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from fiacli.training.losses import SegmentationLoss

    return SegmentationLoss(
        ce_weight=config.ce_weight,
        dice_weight=config.dice_weight,
        class_weights=tuple(config.class_weights),
        dice_reduction=config.dice_reduction,
    )


def build_run_data(config: Any, run_dir: Path, dist: DistInfo) -> RunData:
    """Open the splits, parse the expressions, build the model and the loss of a run."""
    from fiacli.training.datasets import open_dataset
    from fiacli.training.transforms import eval_transform, train_transform

    train = open_dataset(config.dataset, config.data_root, config.train_split)
    train.transform = train_transform(
        config.image_size, box_erasing=config.box_erasing, seed=config.seed, num_samples=len(train)
    )
    val = None
    if config.val_split:
        try:
            val = open_dataset(
                config.dataset,
                config.data_root,
                config.val_split,
                eval_transform(config.image_size),
            )
        except FiacliError as exc:
            raise FiacliError(f"validation split: {exc}") from exc
    expressions = list(dict.fromkeys([*train.expressions, *(val.expressions if val else [])]))
    row = {e: i for i, e in enumerate(expressions)}
    model = build_model(config)
    settings = run_parse_settings(config, model.config.text_encoder)
    if dist.is_main:
        info(f"parsing {len(expressions)} expressions ({settings.mode} mode)")
    text = parse_table(expressions, settings, run_dir / "parses.jsonl", dist)
    return RunData(
        train=WithText(train, [row[e] for e in train.expressions], seed=config.seed),
        val=WithText(val, [row[e] for e in val.expressions]) if val is not None else None,
        model=model,
        loss=build_loss(config),
        parse_settings=settings,
        text=text,
        expressions=expressions,
        provenance={"dataset": config.dataset, "train_split": config.train_split},
    )

"""The training recipe: released defaults per dataset, YAML configs and flag overrides.

Precedence is defaults(dataset) < ``--config FILE.yaml`` < command-line flags. The resolved
:class:`TrainConfig` is written to ``config.yaml`` in the run folder, so a run can always be
reproduced (and resumed) from its folder alone.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from fiacli.core.datasets import DATASET_NAMES, DATASETS, RRSISD, DatasetName
from fiacli.core.device import Precision
from fiacli.core.errors import FiacliError, UsageError
from fiacli.text.parsing import PARSE_MODES, ParseMode

SelectMetric = Literal["miou", "oiou"]
SELECT_METRICS: tuple[SelectMetric, ...] = get_args(SelectMetric)
# auto: bf16 on CUDA when supported, else fp16; fp32 on CPU
TrainPrecision = Literal["auto", Precision]
TRAIN_PRECISIONS: tuple[TrainPrecision, ...] = get_args(TrainPrecision)
# the Dice term over a batch's (sample, class) pairs: "sum" as released, "mean" as fiacli 0.1.0
DiceReduction = Literal["sum", "mean"]
DICE_REDUCTIONS: tuple[DiceReduction, ...] = get_args(DiceReduction)
# which parameters skip weight decay: "released" by the released code's parameter names (backbone
# norms and position tables), "norm-layers" every normalisation layer by type (fiacli 0.1.0)
NoDecayRule = Literal["released", "norm-layers"]
NO_DECAY_RULES: tuple[NoDecayRule, ...] = get_args(NoDecayRule)
# what a run folder written before these keys existed was trained with, so it resumes unchanged
LEGACY_DEFAULTS: dict[str, str] = {"dice_reduction": "mean", "no_decay": "norm-layers"}

# Values a resumed run may change: they alter how the run executes, not what it computes.
RUNTIME_KEYS = frozenset(
    {
        "device",
        "num_workers",
        "max_steps",
        "time_budget",
        "tensorboard",
        "log_every",
        "output",
        "data_root",
    }
)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the released RRSIS-D recipe
    (docs/recipe.md);
    :func:`recipe_defaults` has each dataset's (:data:`fiacli.core.datasets.DATASETS`)."""

    dataset: DatasetName = RRSISD.name
    data_root: str = ""
    output: str = ""
    preset: str = "fianet-swinb"
    # schedule and optimiser (docs/recipe.md): AdamW, poly decay per iteration, weight decay 0.01
    # in the code
    epochs: int = RRSISD.recipe["epochs"]
    lr: float = RRSISD.recipe["lr"]
    weight_decay: float = 0.01
    no_decay: NoDecayRule = "released"
    poly_power: float = 0.9
    batch_size: int = 8
    grad_accum: int = 1
    # data
    image_size: int = 480
    # share of training refs with random black boxes (RMSIN, RRSIS-D)
    box_erasing: float = RRSISD.recipe["box_erasing"]
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 2
    # model
    num_tmem: int = RRSISD.recipe["num_tmem"]
    drop_path: float = 0.3
    pretrained: bool = True  # ImageNet Swin + pretrained text encoder (fianet-tiny: text only)
    backbone_weights: str | None = None
    text_encoder: str | None = None
    freeze_text_encoder: bool = False
    model: dict[str, Any] = field(default_factory=dict)  # extra create_model overrides
    # text: parse mode fiacli (quirks fixed) for new training; token length per dataset
    parse_mode: ParseMode = "fiacli"
    token_length: int = RRSISD.token_length
    # loss: 0.9 * CE(class weights) + 0.1 * Dice, the Dice summed over (sample, class) pairs
    ce_weight: float = 0.9
    dice_weight: float = 0.1
    dice_reduction: DiceReduction = "sum"
    class_weights: list[float] = field(default_factory=lambda: [0.9, 1.1])
    # run control
    select_metric: SelectMetric = "miou"  # best checkpoint on val mIoU (see README); or "oiou"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: TrainPrecision = "auto"
    max_steps: int | None = None
    time_budget: float | None = None  # minutes of training before a clean stop
    log_every: int = 10
    tensorboard: bool = False

    def validate(self) -> TrainConfig:
        """Catch impossible values before any data is read or weights are built."""
        if self.dataset not in DATASET_NAMES:
            raise UsageError(
                f"unknown dataset {self.dataset!r}; use one of {_one_of(DATASET_NAMES)}"
            )
        for name in ("epochs", "batch_size", "grad_accum", "image_size", "token_length"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size % 32:
            raise UsageError(f"image size must be a multiple of 32, got {self.image_size}")
        if not self.lr > 0:
            raise UsageError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.box_erasing <= 1:
            raise UsageError(f"box erasing is a share of samples in [0, 1], got {self.box_erasing}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise UsageError(
                    f"{name.replace('_', ' ')} must be {_one_of(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        if len(self.class_weights) != 2:
            raise UsageError(f"class weights are two numbers, got {self.class_weights}")
        if self.num_workers < 0:
            raise UsageError(f"num workers cannot be negative, got {self.num_workers}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# fields whose values are a choice list (a Literal type): validate() checks them, with the list
_CHOICES: dict[str, tuple[str, ...]] = {
    "parse_mode": PARSE_MODES,
    "select_metric": SELECT_METRICS,
    "precision": TRAIN_PRECISIONS,
    "dice_reduction": DICE_REDUCTIONS,
    "no_decay": NO_DECAY_RULES,
}


def _one_of(choices: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)


def recipe_defaults(dataset: str) -> dict[str, Any]:
    """The recipe values of ``dataset`` (the table's, :data:`fiacli.core.datasets.DATASETS`);
    everything else keeps the :class:`TrainConfig` defaults."""
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; use one of {_one_of(DATASET_NAMES)}")
    facts = DATASETS[dataset]  # type: ignore[index]
    return {"dataset": facts.name, "token_length": facts.token_length, **facts.recipe}


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one YAML/flag value to the field's declared type, or refuse clearly."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UsageError(f"config key {name!r} cannot be empty")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if origin is Literal:  # a choice list: validate() checks the value and names the choices
        base = str
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [float(v) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled config type {base!r}")  # pragma: no cover
    shown = str(base) if origin else getattr(base, "__name__", str(base))
    raise UsageError(f"config key {name!r} expects {shown}, got {value!r}")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping of config keys (dashes or underscores), refusing unknown keys."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FiacliError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FiacliError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FiacliError(f"{p} must hold a mapping of config keys, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_keys(values: dict[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise UsageError(
            f"unknown config key(s) in {source}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_FIELDS))})"
        )


def resolve_config(
    dataset: str | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge recipe defaults, an optional YAML file and flag overrides (``None`` = not given)."""
    from_file = load_yaml(config_file) if config_file else {}
    _check_keys(from_file, str(config_file))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(flags, "overrides")
    name = flags.get("dataset") or from_file.get("dataset") or dataset
    if name is None:
        raise UsageError(f"no dataset given; use --dataset {'|'.join(DATASET_NAMES)}")
    values: dict[str, Any] = recipe_defaults(str(name))
    values.update(from_file)
    values.update(flags)
    values["dataset"] = str(name)
    merged = {k: _coerce(k, v) for k, v in values.items()}
    return TrainConfig(**merged).validate()


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically; it is replaced on every fresh start)."""
    import yaml

    from fiacli.core.io import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return Path(path)


def with_legacy_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A config written by fiacli (config.yaml, a checkpoint's provenance), with the values its
    version used for the keys it did not know yet: it holds every key it knew of."""
    return {**LEGACY_DEFAULTS, **saved}


def load_run_config(run_dir: str | os.PathLike[str], overrides: dict[str, Any]) -> TrainConfig:
    """The config of an existing run, for ``--resume``; only run-time keys may change."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FiacliError(f"cannot resume: {path} not found (is {run_dir} a fiacli run folder?)")
    saved = load_yaml(path)
    _check_keys(saved, str(path))
    saved = with_legacy_defaults(saved)
    # limits apply to the invocation that sets them, not to the continued run
    saved.update(max_steps=None, time_budget=None)
    config = TrainConfig(**{k: _coerce(k, v) for k, v in saved.items()})
    for key, value in overrides.items():
        if value is None or key not in _FIELDS:
            continue
        value = _coerce(key, value)
        if getattr(config, key) == value:
            continue
        if key not in RUNTIME_KEYS:
            raise UsageError(
                f"cannot change {key} when resuming (the run has {getattr(config, key)!r}); "
                f"start a new run instead"
            )
        setattr(config, key, value)
    return config.validate()

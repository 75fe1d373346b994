"""Shared by the training tests: a tiny synthetic dataset and a FIANet small enough for CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A FIANet with the real structure (Swin stages + FIAM + TMEM + decoder, BERT with the bundled
# WordPiece vocabulary) but a few thousand parameters per part, so a step takes milliseconds.
TINY_TEXT = {
    "vocab_size": 30522,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
TINY_MODEL: dict[str, Any] = {
    "embed_dim": 8,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 4,
    "decoder_width": 8,
    "text_config": TINY_TEXT,
}


def make_synth(root: Path, *, train: int = 16, val: int = 8, test: int = 8, size: int = 64) -> Path:
    from fiacli.training.synth import generate_synth

    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        generate_synth(root, seed=3, counts={"train": train, "val": val, "test": test}, size=size)
    return root


def tiny_overrides(data_root: Path, output: Path, **extra: Any) -> dict[str, Any]:
    """resolve_config overrides for a seconds-long CPU run on ``make_synth`` data."""
    return {
        "data_root": str(data_root),
        "output": str(output),
        "image_size": 32,
        "batch_size": 4,
        "epochs": 2,
        "pretrained": False,
        "num_workers": 0,
        "model": dict(TINY_MODEL),
        "drop_path": 0.0,
        **extra,
    }


def tiny_config(data_root: Path, output: Path, **extra: Any):
    from fiacli.training.recipe import resolve_config

    return resolve_config("synth", overrides=tiny_overrides(data_root, output, **extra))


def weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))

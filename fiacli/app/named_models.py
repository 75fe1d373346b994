"""Models by name: the checkpoint bundled with fiacli and the ones a user registers.

``-m NAME`` works wherever a checkpoint path is accepted. A name resolves in this order: an
existing file of that name (a path always means what it says), a user-registered name, a bundled
name. Registrations are one small JSON file, ``models.json``, in the user config folder:
``$FIACLI_HOME`` if set, else the platform's config folder for fiacli (``$XDG_CONFIG_HOME/fiacli``
or ``~/.config/fiacli`` on Linux), so tests and shared machines can point it elsewhere.
Nothing here imports torch except the checkpoint check of :func:`add_model` and ``details``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fiacli.core.errors import FiacliError

REGISTRY_FILE = "models.json"
REGISTRY_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def config_dir() -> Path:
    """Where fiacli keeps user settings: ``$FIACLI_HOME``, else the platform config folder."""
    home = os.environ.get("FIACLI_HOME")
    if home:
        return Path(home).expanduser()
    import click

    return Path(click.get_app_dir("fiacli"))


def registry_path() -> Path:
    return config_dir() / REGISTRY_FILE


@dataclass
class ModelEntry:
    """One model ``fiacli models`` knows: its name, file, and where the name comes from."""

    name: str
    path: str
    source: str  # "bundled" | "user"
    description: str = ""
    added: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return Path(self.path).is_file()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exists": self.exists}


def bundled_models() -> dict[str, ModelEntry]:
    """The checkpoints inside the package (the demo model), by name."""
    from fiacli.app.demo import DEMO_MODEL_DESCRIPTION, DEMO_MODEL_NAME, demo_model_path

    return {
        DEMO_MODEL_NAME: ModelEntry(
            DEMO_MODEL_NAME, str(demo_model_path()), "bundled", DEMO_MODEL_DESCRIPTION
        )
    }


def _read() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("path"), str) for v in models.values()
        ):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise FiacliError(
            f"{path} is not a fiacli model registry; fix it or delete it (it only lists names)"
        ) from None
    return models


def _write(models: dict[str, dict[str, Any]]) -> None:
    from fiacli.core.io import atomic_output

    path = registry_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FiacliError(f"cannot create the config folder {path.parent}: {exc}") from None
    payload = {"version": REGISTRY_VERSION, "models": dict(sorted(models.items()))}
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def user_models() -> dict[str, ModelEntry]:
    """The registered models, by name (empty when nothing was ever registered)."""
    return {
        name: ModelEntry(name, v["path"], "user", str(v.get("description", "")), v.get("added"))
        for name, v in _read().items()
    }


def checkpoint_details(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a listing shows about a checkpoint, from its header only (no weights are read)."""
    from fiacli.models import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    config = meta.get("config") or {}
    prov = meta.get("provenance") or {}
    trained = prov.get("config") or {}
    val = prov.get("val") or {}
    return {
        "preset": trained.get("preset") or prov.get("preset"),
        "image_size": meta.get("image_size"),
        "text_encoder": (meta.get("text_encoder") or {}).get("source")
        or config.get("text_encoder"),
        "parse_mode": (meta.get("parse") or {}).get("mode"),
        "dataset": prov.get("dataset") or prov.get("source"),
        "val_miou": val.get("val_miou"),
        "size_mb": round(Path(path).stat().st_size / 2**20, 1),
    }


def list_models(*, details: bool = False) -> list[ModelEntry]:
    """Bundled models first, then the registered ones by name."""
    entries = [*bundled_models().values(), *user_models().values()]
    if details:
        for entry in entries:
            if entry.exists:
                try:
                    entry.details = checkpoint_details(entry.path)
                except FiacliError as exc:
                    entry.details = {"error": str(exc)}
    return entries


def add_model(
    name: str, path: str | os.PathLike[str], *, description: str = "", overwrite: bool = False
) -> ModelEntry:
    """Register ``path`` (a fiacli checkpoint, checked now) under ``name``."""
    if not _NAME.fullmatch(name):
        raise FiacliError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
            "(up to 64, starting with a letter or digit)"
        )
    if name in bundled_models():
        raise FiacliError(f"{name!r} is the name of a bundled model; choose another name")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FiacliError(f"model not found: {file}")
    from fiacli.models import read_checkpoint_meta

    read_checkpoint_meta(file)  # refuses .pth files and foreign safetensors with a clear line
    models = _read()
    if name in models and not overwrite:
        raise FiacliError(
            f"{name!r} is already registered ({models[name]['path']}); pass -f to replace it"
        )
    added = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    models[name] = {"path": str(file.resolve()), "description": description, "added": added}
    _write(models)
    return ModelEntry(name, str(file.resolve()), "user", description, added)


def remove_model(name: str) -> ModelEntry:
    """Forget a registered name (the checkpoint file itself is left alone)."""
    if name in bundled_models():
        raise FiacliError(f"{name!r} is bundled with fiacli and cannot be removed")
    models = _read()
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise FiacliError(f"no registered model named {name!r} (registered: {known})")
    entry = models.pop(name)
    _write(models)
    return ModelEntry(name, entry["path"], "user", str(entry.get("description", "")))


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint path and how it was chosen (for messages and the run manifest)."""

    path: Path
    name: str | None = None  # the registered or bundled name, when one was used
    source: str = "path"  # "path" | "user" | "bundled"
    default: bool = False  # no model was given: the bundled demo model

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "source": self.source}


def resolve_model(spec: str | os.PathLike[str] | None) -> ResolvedModel:
    """A ``-m`` value to a checkpoint path: ``None`` is the bundled demo model.

    An existing file wins over a name; a registered name over a bundled one. Anything else is
    returned as a path, so that loading reports "model not found" with the path the user typed.
    """
    from fiacli.app.demo import DEMO_MODEL_NAME

    if spec is None:
        entry = bundled_models()[DEMO_MODEL_NAME]
        _require_file(entry)
        return ResolvedModel(Path(entry.path), entry.name, "bundled", default=True)
    text = os.fspath(spec)
    if Path(text).expanduser().exists() or not _NAME.fullmatch(text):
        return ResolvedModel(Path(text))
    entry = user_models().get(text) or bundled_models().get(text)
    if entry is None:
        return ResolvedModel(Path(text))
    _require_file(entry)
    return ResolvedModel(Path(entry.path), entry.name, entry.source)


def _require_file(entry: ModelEntry) -> None:
    if entry.exists:
        return
    if entry.source == "bundled":
        raise FiacliError(
            f"the bundled model {entry.name} is missing from this installation ({entry.path}); "
            "reinstall fiacli, or pass -m MODEL.safetensors"
        )
    raise FiacliError(
        f"registered model {entry.name!r} points to {entry.path}, which no longer exists; "
        f"register it again (fiacli models add -f {entry.name} PATH) or remove it"
    )

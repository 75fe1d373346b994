"""Read untrusted pickles without executing code: only allow-listed globals may be created.

RRSIS-D's ``refs(unc).p`` and the released checkpoints' ``args`` are pickles from the internet;
plain ``pickle.load`` on them would run whatever they contain.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import IO, Any

from fiacli.core.errors import FiacliError

# Plain containers and scalars are built by pickle opcodes and need no global at all; these are the
# harmless globals that some protocols still reference for them.
PLAIN_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("builtins", "range"),
        ("collections", "OrderedDict"),
        ("__builtin__", "set"),
        ("copy_reg", "_reconstructor"),
    }
)


class UnsafePickleError(FiacliError):
    """The pickle asked for a type outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global not in ``allowed``."""

    def __init__(self, file: IO[bytes], allowed: Iterable[tuple[str, str]] = (), **kwargs: Any):
        super().__init__(file, **kwargs)
        self._allowed = PLAIN_GLOBALS | frozenset(allowed)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only plain data types are allowed"
            )
        return super().find_class(module, name)


def safe_load(file: IO[bytes], allowed: Iterable[tuple[str, str]] = (), **kwargs: Any) -> Any:
    """``pickle.load`` restricted to plain data plus ``allowed`` (module, name) globals."""
    try:
        return SafeUnpickler(file, allowed, **kwargs).load()
    except UnsafePickleError:
        raise
    except (MemoryError, OverflowError) as exc:  # e.g. bytearray(2**44): corrupt or hostile
        raise FiacliError(
            f"not a readable pickle: it asks for more memory than there is "
            f"({exc.__class__.__name__}{': ' + str(exc) if str(exc) else ''})"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
    ) as exc:
        raise FiacliError(f"not a readable pickle ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    """``Class: message``, or just the class when the message is empty (never ``()``)."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def safe_loads(data: bytes, allowed: Iterable[tuple[str, str]] = (), **kwargs: Any) -> Any:
    return safe_load(io.BytesIO(data), allowed, **kwargs)

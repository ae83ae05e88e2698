"""A training command's configuration, resolved once: validated, ``init_from`` applied, the run directory
created and the resume checkpoint chosen (and its identity checked), then frozen. What is downstream (tokenizer,
model, data, the loop) takes the :class:`ResolvedRun` and recomputes none of it.

Freezing is in place and recursive over the dataclass fields (:func:`freeze`): assigning a field of the config
or of any of its parts raises ``dataclasses.FrozenInstanceError``; ``dataclasses.replace`` of a frozen config
gives a frozen copy. List contents (``data.paths``) are not frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")
_FROZEN: dict[type, type] = {}


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """A frozen, validated config and what resolving it found."""

    cfg: Any  # PretrainConfig | SFTConfig, frozen
    run_dir: Path  # created and writable
    resume_from: Path | None  # the checkpoint ``resume`` names now (None: a fresh start)
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))  # build_model's extra arguments (init_from)


def _refuse(self: Any, name: str, *_: Any) -> None:
    raise FrozenInstanceError(f"cannot change {type(self).__name__}.{name}: the resolved config is frozen "
                              "(cod_train/runs/resolve.py); change the command's overrides instead")


def _refreeze(cls: Any, state: dict[str, Any]) -> Any:
    """Unpickle / deep-copy a frozen instance: the plain class's object with ``state``, frozen again."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return freeze(obj)


def _frozen_class(cls: Any) -> type:
    """``cls`` with assignment refused; its ``__init__`` (hence ``dataclasses.replace``) builds a frozen copy."""
    if cls not in _FROZEN:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            object.__setattr__(self, "__class__", cls)
            cls.__init__(self, *args, **kwargs)
            freeze(self)

        _FROZEN[cls] = type(cls.__name__, (cls,), {
            "__init__": __init__, "__setattr__": _refuse, "__delattr__": _refuse,
            "__reduce_ex__": lambda self, protocol: (_refreeze, (cls, dict(self.__dict__))),
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return _FROZEN[cls]


def is_frozen(obj: Any) -> bool:
    return type(obj) in _FROZEN.values()


def freeze(obj: T) -> T:
    """Make the dataclass instance ``obj`` and every dataclass instance in its fields read-only, in place."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type) or is_frozen(obj):
        return obj
    for f in dataclasses.fields(obj):
        freeze(getattr(obj, f.name))
    object.__setattr__(obj, "__class__", _frozen_class(type(obj)))
    return obj

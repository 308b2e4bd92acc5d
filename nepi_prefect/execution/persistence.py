"""Saving and loading experiments, lent to the engine by the description layer.

The engine does not know the description format. ``nepi_prefect.spec``
registers its writer and reader here when it is imported, and
``ExperimentController.save/load`` use them; another format can register its
own pair the same way.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from nepi_prefect.execution.errors import ExperimentError

Save = Callable[[Any, str], str]   # (ec, path) -> the path written
Load = Callable[..., Any]          # (path, **ec_kwargs) -> a new ExperimentController


class Serializer(NamedTuple):
    save: Save
    load: Load


_serializer: Serializer | None = None


class NoSerializerError(ExperimentError, RuntimeError):
    """No description format was registered for save/load."""


def register_serializer(save: Save, load: Load) -> None:
    """Make ``save(ec, path)`` and ``load(path, **kwargs)`` the engine's save/load."""
    global _serializer
    _serializer = Serializer(save, load)


def serializer() -> Serializer:
    """The registered pair; a clear error if none was."""
    if _serializer is None:
        raise NoSerializerError(
            "no experiment serializer is registered: import nepi_prefect.spec (it registers "
            "YAML/JSON descriptions) or call "
            "nepi_prefect.execution.persistence.register_serializer(save, load)")
    return _serializer

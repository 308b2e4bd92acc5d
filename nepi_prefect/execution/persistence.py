"""Saving and loading experiments, lent to the engine by the description layer.

The engine does not know the description format. ``nepi_prefect.spec``
registers its writer and reader here when it is imported, and
``ExperimentController.save/load`` use them. If nothing registered a pair yet
(a NEPI script that never imports ``nepi_prefect.spec``), the first one
declared in the entry-point group ``nepi_prefect.serializers`` is loaded:
``pyproject.toml`` declares the description format there. Another format can
register its own pair either way.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable, NamedTuple

from nepi_prefect.execution.errors import ExperimentError

Save = Callable[[Any, str], str]   # (ec, path) -> the path written
Load = Callable[..., Any]          # (path, **ec_kwargs) -> a new ExperimentController


class Serializer(NamedTuple):
    save: Save
    load: Load


#: where packages declare a serializer (a Serializer, or a (save, load) pair)
SERIALIZER_GROUP = "nepi_prefect.serializers"
_serializer: Serializer | None = None


class NoSerializerError(ExperimentError, RuntimeError):
    """No description format was registered for save/load."""


def register_serializer(save: Save, load: Load) -> None:
    """Make ``save(ec, path)`` and ``load(path, **kwargs)`` the engine's save/load."""
    global _serializer
    _serializer = Serializer(save, load)


def serializer() -> Serializer:
    """The registered pair, else the first declared entry point; a clear error if none."""
    if _serializer is None:
        for entry in entry_points(group=SERIALIZER_GROUP):
            register_serializer(*entry.load())
            break
    if _serializer is None:
        raise NoSerializerError(
            "no experiment serializer is registered: import nepi_prefect.spec (it registers "
            "YAML/JSON descriptions), reinstall the package (it declares the entry-point "
            f"group {SERIALIZER_GROUP}) or call "
            "nepi_prefect.execution.persistence.register_serializer(save, load)")
    return _serializer

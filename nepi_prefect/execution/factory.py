"""The registry of resource types, by rtype name (NEPI's ``ResourceFactory``).

Types come from the entry-point group ``nepi_prefect.resources`` (the
built-ins are declared there too) and from :meth:`ResourceFactory.register_type`.
Entry points are loaded lazily, the first time a type is looked up. Tests
get a registry of their own with :meth:`ResourceFactory.scoped`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import threading
from typing import Any, Iterator

from nepi_prefect.execution.errors import UnknownResourceTypeError, listing
from nepi_prefect.execution.rtype import ResourceType

log = logging.getLogger("nepi_prefect")


class ResourceFactory:
    """Resource types by rtype: registered ones, then entry points."""

    ENTRY_POINT_GROUP = "nepi_prefect.resources"
    #: modules with ``names()`` and ``load(rtype)``, for platforms whose types are
    #: made on demand (ns-3: one per TypeId of its registry)
    PROVIDER_GROUP = "nepi_prefect.resource_providers"
    _resource_types: dict[str, type[ResourceType]] = {}
    _entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
    _providers: list[Any] | None = None
    _lock = threading.Lock()

    @classmethod
    def register_type(cls, rclass: type[ResourceType]) -> None:
        """Make ``rclass`` known under its rtype (replacing any type of that name)."""
        cls._resource_types[rclass.get_rtype()] = rclass

    @classmethod
    def unregister_type(cls, rtype: str) -> None:
        """Forget the type ``rtype`` (an entry point of that name is found again on use)."""
        cls._resource_types.pop(rtype, None)

    @classmethod
    def reset(cls) -> None:
        """Forget every type and the entry-point scan: the next lookup starts afresh."""
        with cls._lock:
            cls._resource_types = {}
            cls._entry_points = None

    @classmethod
    @contextlib.contextmanager
    def scoped(cls) -> Iterator[type["ResourceFactory"]]:
        """A registry for one block (a test): what is registered or scanned inside
        is forgotten at the end, and the registry is as it was before."""
        with cls._lock:
            saved = dict(cls._resource_types), cls._entry_points
        try:
            yield cls
        finally:
            with cls._lock:
                cls._resource_types, cls._entry_points = saved

    @classmethod
    def _discovered(cls) -> dict[str, importlib.metadata.EntryPoint]:
        found = cls._entry_points
        if found is None:
            with cls._lock:
                if cls._entry_points is None:
                    eps = importlib.metadata.entry_points(group=cls.ENTRY_POINT_GROUP)
                    cls._entry_points = {ep.name: ep for ep in eps}
                found = cls._entry_points
        return found

    @classmethod
    def _provided(cls) -> list[Any]:
        if cls._providers is None:
            providers = []
            for ep in importlib.metadata.entry_points(group=cls.PROVIDER_GROUP):
                try:
                    providers.append(ep.load())
                except Exception as exc:  # a broken plugin must not break the others
                    log.warning("resource provider %s could not be loaded: %s", ep.value, exc)
            cls._providers = providers
        return cls._providers

    @classmethod
    def _from_providers(cls, rtype: str) -> type[ResourceType] | None:
        for provider in cls._provided():
            try:
                rclass = provider.load(rtype)
            except Exception as exc:
                log.warning("resource type %s could not be made: %s", rtype, exc)
                continue
            if rclass is not None:
                return cls._resource_types.setdefault(rtype, rclass)
        return None

    @classmethod
    def _load(cls, rtype: str) -> type[ResourceType] | None:
        ep = cls._discovered().get(rtype)
        if ep is None:
            return cls._from_providers(rtype)
        try:
            rclass = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            log.warning("resource type %s (%s) could not be loaded: %s", rtype, ep.value, exc)
            return None
        cls._resource_types.setdefault(rtype, rclass)
        return rclass

    @classmethod
    def get_resource_type(cls, rtype: str) -> type[ResourceType]:
        rclass = cls._resource_types.get(rtype) or cls._load(rtype)
        if rclass is None:
            raise UnknownResourceTypeError(
                f"unknown resource type {rtype!r}; known types: {listing(cls.resource_types())}")
        return rclass

    @classmethod
    def resource_types(cls) -> dict[str, type[ResourceType]]:
        """Every known type, loading all entry points."""
        for name in cls._discovered():
            if name not in cls._resource_types:
                cls._load(name)
        for provider in cls._provided():
            try:
                names = provider.names()
            except Exception as exc:
                log.warning("resource provider %s could not list its types: %s", provider, exc)
                continue
            for name in names:
                if name not in cls._resource_types:
                    cls._from_providers(name)
        return dict(cls._resource_types)

    @classmethod
    def create(cls, rtype: str, ec: Any, guid: int) -> Any:
        """A new RM of ``rtype`` for ``ec`` (an ExperimentController) under ``guid``."""
        return cls.get_resource_type(rtype)(ec, guid)


def populate_factory() -> None:
    """Load every installed resource type (NEPI API)."""
    ResourceFactory.resource_types()

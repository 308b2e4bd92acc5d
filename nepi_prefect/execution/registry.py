"""The RMs of one experiment, by guid."""

from __future__ import annotations

import threading
from typing import Any, Iterable, Iterator

from nepi_prefect.execution.checks import guid_list
from nepi_prefect.execution.errors import InvalidInputError, UnknownResourceError, listing
from nepi_prefect.execution.factory import ResourceFactory
from nepi_prefect.execution.resource import ResourceManager


class ResourceRegistry:
    """Creates RMs under fresh or chosen guids and finds them again."""

    def __init__(self) -> None:
        self._by_guid: dict[int, ResourceManager] = {}
        self._by_name: dict[str, int] = {}
        self._next = 1
        self._lock = threading.Lock()

    def create(self, ec: Any, rtype: str, guid: int | None = None,
               name: str | None = None) -> int:
        """A new RM of ``rtype`` for ``ec``; its guid (``guid`` if given and free).

        ``name`` (default ``<rtype>-<guid>``) must be unique in the experiment.
        """
        rclass = ResourceFactory.get_resource_type(rtype)
        if name is not None and (not isinstance(name, str) or not name.strip()
                                 or name != name.strip()):
            raise InvalidInputError(f"a resource name is a non-empty string without surrounding "
                                    f"spaces, got {name!r}")
        with self._lock:
            if guid is None:
                guid = self._next
            elif not isinstance(guid, int) or isinstance(guid, bool) or guid < 0:
                raise InvalidInputError(f"a guid is a non-negative integer, got {guid!r}")
            elif guid in self._by_guid:
                raise InvalidInputError(f"guid {guid} is already taken by {self._by_guid[guid]!r}")
            if name is not None and name in self._by_name:
                raise InvalidInputError(f"resource name {name!r} is already taken by guid "
                                        f"{self._by_name[name]}")
            rm = rclass(ec, guid)
            rm._name = name
            if rm.name in self._by_name:  # a default name somebody already took
                raise InvalidInputError(f"resource name {rm.name!r} is already taken by guid "
                                        f"{self._by_name[rm.name]}; give this one a name")
            self._next = max(self._next, guid + 1)
            self._by_guid[guid] = rm
            self._by_name[rm.name] = guid
        return guid

    def get(self, guid: int) -> ResourceManager:
        try:
            return self._by_guid[guid]
        except (KeyError, TypeError):
            known = self._by_guid
            raise UnknownResourceError(
                f"no resource with guid {guid!r}; registered guids: "
                f"{listing(known) if len(known) < 50 else f'1..{max(known)}'}") from None

    def many(self, guids: int | Iterable[int] | None) -> list[ResourceManager]:
        """The RMs of ``guids`` (one, several or None for none); unknown ones raise."""
        return [self.get(g) for g in guid_list(guids)]

    def guid_of(self, name: str) -> int:
        """The guid of the resource called ``name``."""
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise UnknownResourceError(f"no resource named {name!r}") from None

    def __contains__(self, guid: object) -> bool:
        return guid in self._by_guid

    def __iter__(self) -> Iterator[ResourceManager]:
        return iter(list(self._by_guid.values()))

    def guids(self) -> list[int]:
        return list(self._by_guid)

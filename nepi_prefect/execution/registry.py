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
        self._next = 1
        self._lock = threading.Lock()

    def create(self, ec: Any, rtype: str, guid: int | None = None) -> int:
        """A new RM of ``rtype`` for ``ec``; its guid (``guid`` if given and free)."""
        rclass = ResourceFactory.get_resource_type(rtype)
        with self._lock:
            if guid is None:
                guid = self._next
            elif not isinstance(guid, int) or isinstance(guid, bool) or guid < 0:
                raise InvalidInputError(f"a guid is a non-negative integer, got {guid!r}")
            elif guid in self._by_guid:
                raise InvalidInputError(f"guid {guid} is already taken by {self._by_guid[guid]!r}")
            self._next = max(self._next, guid + 1)
            self._by_guid[guid] = rclass(ec, guid)
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

    def __contains__(self, guid: object) -> bool:
        return guid in self._by_guid

    def __iter__(self) -> Iterator[ResourceManager]:
        return iter(list(self._by_guid.values()))

    def guids(self) -> list[int]:
        return list(self._by_guid)

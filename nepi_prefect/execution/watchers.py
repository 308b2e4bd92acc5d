"""The watcher protocol: whatever waits on RMs' states is told when they change.

A condition waiting to start an RM, a deployment group's barrier and a release
held back by the RMs it must outlive are all :class:`Watcher`\\ s: they are
registered on the guids they watch and re-check themselves in
:meth:`Watcher.on_state_changed`. None of them holds a thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Iterable, Protocol

from nepi_prefect.execution.resource import ResourceManager



class Watcher(Protocol):
    def on_state_changed(self, rm: ResourceManager) -> None:
        """``rm``, which this watcher watches, changed state."""


class Watchers:
    """Who watches which guid."""

    def __init__(self) -> None:
        self._by_guid: dict[int, list[Watcher]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def add(self, watcher: Watcher, guids: Iterable[int]) -> None:
        """Have ``watcher`` told of every state change of ``guids``."""
        with self._lock:
            for guid in guids:
                self._by_guid[guid].append(watcher)

    def drop(self, watcher: Watcher, guids: Iterable[int]) -> None:
        with self._lock:
            for guid in guids:
                found = self._by_guid.get(guid)
                if found and watcher in found:
                    found.remove(watcher)

    def state_changed(self, rm: ResourceManager) -> None:
        """Tell every watcher of ``rm`` (outside the lock: watchers call back in)."""
        found = self._by_guid.get(rm.guid)
        if found:
            for watcher in list(found):
                watcher.on_state_changed(rm)

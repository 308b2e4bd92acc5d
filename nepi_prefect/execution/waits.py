"""Waiting: ``wait()`` and friends block until RMs reach states, without polling.

Every state change bumps a version and wakes the waiters, who re-read the
RMs they wait for. An RM whose state is computed lazily, when read (NEPI RMs
do that), is re-read every 0.5 s as NEPI's ``wait`` did.
"""

from __future__ import annotations

import collections
import threading
from datetime import timedelta
from typing import Callable, Iterable

from nepi_prefect.execution.errors import InvalidInputError, listing
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import ResourceState2str
from nepi_prefect.util.timefuncs import tnow

#: seconds between re-reads of RMs whose state is computed when read
LAZY_STATE_POLL = 0.5


class Waiters:
    """Wakes and runs every ``wait()`` of one experiment."""

    def __init__(self, finished: Callable[[], bool]):
        self._finished = finished
        self._changed = threading.Condition()
        self._version = 0

    def notify(self) -> None:
        """Wake every wait(): something they may be waiting for changed."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, rms: list[ResourceManager], states: Iterable[int], timeout: float | None,
             stop_when_finished: bool) -> bool:
        """True once every RM of ``rms`` is in one of ``states`` (or, with
        ``stop_when_finished``, the experiment is finished); False on timeout."""
        states = set(states)
        bad = [s for s in states if s not in ResourceState2str]
        if bad:
            raise InvalidInputError(f"unknown state(s) {bad}; valid: {listing(ResourceState2str.values())}")
        waiting = collections.deque(rms)
        deadline = None if timeout is None else tnow() + timedelta(seconds=timeout)
        while True:
            seen = self._version
            # ``rm.state`` may be a property that refreshes itself (NEPI RMs do
            # that), so it is read here, outside any lock.
            while waiting and waiting[0].state in states:
                waiting.popleft()
            if not waiting or (stop_when_finished and self._finished()):
                return True
            left = None if deadline is None else (deadline - tnow()).total_seconds()
            if left is not None and left <= 0:
                return False
            with self._changed:
                if self._version == seen:
                    self._changed.wait(LAZY_STATE_POLL if left is None else min(LAZY_STATE_POLL, left))


def ending_guids(rms: Iterable[ResourceManager]) -> list[int]:
    """The guids whose end ends a run by default: every RM whose type finishes by
    itself (applications, measurements), not nodes, captures or collectors."""
    return [rm.guid for rm in rms if type(rm).finishes_by_itself()]

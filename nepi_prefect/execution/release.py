"""Release: free RMs in the order their hooks ask, and wait until they are RELEASED.

Two RM hooks order a release. ``release_dependents()`` names RMs that cannot
outlive this one (releasing a node releases its apps); ``release_after()``
names RMs released before this one when both are being released (a Collector
before the apps it collects from, apps before their node). The order is
recorded as edges between the release runs.
"""

from __future__ import annotations

import collections
import functools
import logging
import traceback
from typing import Callable

from nepi_prefect.execution.coordination import Coordinator, Lookup
from nepi_prefect.execution.dispatch import Dispatch
from nepi_prefect.execution.ledger import RunLedger
from nepi_prefect.execution.recording import ActionRun, RunState
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import ActionKind, ResourceState
from nepi_prefect.util.timefuncs import tnow

S = ResourceState
#: ``wait_released(guids, timeout)``: True once every guid is RELEASED
WaitReleased = Callable[[list[int], float], bool]


class Releaser:
    """Schedules releases in order and waits for them, with a timeout."""

    def __init__(self, lookup: Lookup, known: Callable[[int], bool], ledger: RunLedger,
                 dispatch: Dispatch, coordinator: Coordinator, wait_released: WaitReleased,
                 logger: logging.Logger, timeout: float):
        self._lookup = lookup
        self._known = known
        self._ledger = ledger
        self._dispatch = dispatch
        self._coordinator = coordinator
        self._wait_released = wait_released
        self._logger = logger
        #: seconds release() waits before it marks stuck RMs RELEASED
        self.timeout = timeout

    def release(self, rms: list[ResourceManager]) -> None:
        """Release ``rms`` (and what they take along) and wait until they are RELEASED."""
        releasing = set(self.release_async([rm.guid for rm in rms]))
        rms = rms + [self._lookup(g) for g in releasing - {rm.guid for rm in rms}]
        if not self._wait_released([rm.guid for rm in rms], self.timeout):
            stuck = [rm for rm in rms if rm.recorded_state != S.RELEASED]
            self._logger.error("release timed out after %ss; not released: %s", self.timeout, stuck)
            for rm in stuck:
                rm.set_released()

    def release_async(self, guids: list[int]) -> list[int]:
        """Schedule the release of ``guids`` and of their ``release_dependents``;
        returns every guid now releasing.

        An RM waits for those of its ``release_after()`` RMs that are being
        released too; one that stays (a Collector of other apps) is not waited for.
        """
        todo = []
        queue = collections.deque(guids)
        while queue:
            rm = self._lookup(queue.popleft())
            if not rm.begin_release():
                continue
            todo.append(rm)
            queue.extend(g for g in rm.release_dependents() if self._known(g))
        runs = {rm.guid: self._ledger.open(ActionKind.RELEASE, rm) for rm in todo}
        for rm in todo:
            after = [g for g in rm.release_after() if self._known(g) and self._held(g)]
            run = runs[rm.guid]
            self._ledger.add_upstream(run, [
                r for g in after if (r := runs.get(g) or self._ledger.latest(g, ActionKind.RELEASE))])
            self._coordinator.release_after(rm, after, functools.partial(self._schedule, rm, run))
        return list(runs)

    def _held(self, guid: int) -> bool:
        """Whether ``guid`` is being released and is not RELEASED yet."""
        rm = self._lookup(guid)
        return rm.releasing and rm.recorded_state != S.RELEASED

    def _schedule(self, rm: ResourceManager, run: ActionRun) -> None:
        self._dispatch.call_at(functools.partial(self._execute, rm, run), tnow(),
                               owner=rm, action=ActionKind.RELEASE)

    def _execute(self, rm: ResourceManager, run: ActionRun) -> None:
        self._ledger.running(run)
        try:
            rm.release()
        except Exception:
            tb = traceback.format_exc()
            rm.error(f"release failed:\n{tb}")
            self._ledger.finish(run, RunState.FAILED, f"release raised: {tb.strip().splitlines()[-1]}")
        finally:
            if rm.recorded_state != S.RELEASED:
                rm.set_released()

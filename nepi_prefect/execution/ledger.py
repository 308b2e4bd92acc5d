"""The action-run ledger: every deploy, start, stop, release and barrier as an
:class:`ActionRun`, and the only code that tells the recorder about them.

The ledger keeps the runs still open for each RM, closes them when the RM
reaches (or can no longer reach) their goal, and remembers the latest run of
each kind, from which conditions and release orders draw their edges.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from datetime import datetime

from nepi_prefect.execution.recording import ActionRun, Recorder, ResourceChange, RunState
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import TARGETS, ActionKind, ResourceState, ResourceState2str
from nepi_prefect.util.timefuncs import tnow


# The members as module globals: an enum member read off its class costs ten
# times more (Python 3.11), and these are read on every state change.
NEW, DISCOVERED, PROVISIONED, READY, STARTED, STOPPED, FINISHED, FAILED, RELEASED = ResourceState
K = ActionKind

#: which runs bring an RM to a state, most specific first (for condition edges)
_RUNS_TO = {DISCOVERED: (K.DEPLOY,), PROVISIONED: (K.DEPLOY,), READY: (K.DEPLOY,),
            STARTED: (K.START, K.DEPLOY), STOPPED: (K.STOP, K.START, K.DEPLOY),
            FINISHED: (K.STOP, K.START, K.DEPLOY),
            RELEASED: (K.RELEASE, K.STOP, K.START)}


class RunLedger:
    """Opens, moves and closes action runs, and reports each change to ``recorder``."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._open: dict[int, list[ActionRun]] = collections.defaultdict(list)
        self._latest: dict[tuple[int, ActionKind], ActionRun] = {}
        self._lock = threading.Lock()

    # -- opening -----------------------------------------------------------------
    def open(self, kind: ActionKind, rm: ResourceManager,
             upstream: list[ActionRun] | None = None) -> ActionRun:
        """A new run of ``kind`` for ``rm``, downstream of ``upstream``."""
        run = ActionRun(kind, rm.guid, rm.get_rtype(), upstream or [], resource_name=rm.name)
        with self._lock:
            self._open[rm.guid].append(run)
            self._latest[(rm.guid, kind)] = run
        self.recorder.action_changed(run)
        return run

    def open_barrier(self, group: int) -> ActionRun:
        """The run of a deployment group's barrier (``barrier-group-<n>``)."""
        run = ActionRun(K.BARRIER, group, "group")
        self.recorder.action_changed(run)
        return run

    def add_upstream(self, run: ActionRun, upstream: list[ActionRun]) -> None:
        """``run`` waits for ``upstream`` too."""
        if upstream:
            run.upstream.extend(upstream)
            self.recorder.action_changed(run)

    # -- moving ------------------------------------------------------------------
    def scheduled(self, run: ActionRun, when: datetime) -> None:
        """``run`` is due at ``when`` (later than now)."""
        if run.state == RunState.PENDING:
            run.state, run.scheduled_for = RunState.SCHEDULED, when
            self.recorder.action_changed(run)

    def running(self, run: ActionRun) -> None:
        if run.state in (RunState.PENDING, RunState.SCHEDULED):
            run.state, run.started_at = RunState.RUNNING, tnow()
            self.recorder.action_changed(run)

    def finish(self, run: ActionRun, state: RunState, message: str = "") -> None:
        """Close ``run`` in ``state`` (nothing if it is closed already)."""
        with self._lock:
            if run.state.is_final:
                return
            run.state, run.ended_at = state, tnow()
            if message and not run.message:
                run.message = message
            runs = self._open.get(run.guid)
            if runs and run in runs and run.kind != K.BARRIER:
                runs.remove(run)
        self.recorder.action_changed(run)

    def settle(self, run: ActionRun, state: ResourceState, why: str) -> None:
        """Close ``run`` that will not act: completed if ``state`` already meets its
        goal, cancelled (``why``) otherwise."""
        reached = state in TARGETS.get(run.kind, ())
        self.finish(run, RunState.COMPLETED if reached else RunState.CANCELLED,
                    "" if reached else why)

    def state_changed(self, rm: ResourceManager, state: ResourceState) -> None:
        """Close the open runs of ``rm`` that ``state`` completes or ends; record a stop
        the RM made by itself, or a failure it reached by itself."""
        runs = list(self._open.get(rm.guid) or ())
        change = self._change(rm, state, runs)
        self_stop = state in (STOPPED, FINISHED) and not rm.releasing \
            and not any(run.kind == K.STOP for run in runs) and not self._stopped_since_start(rm)
        reason = change.failure or ""
        # FAILED while nothing ran (an app whose process failed after its start): the
        # failure is a stop of its own, Failed, so the record shows which RM failed and why
        self_fail = state == FAILED and not rm.releasing \
            and not any(run.state == RunState.RUNNING for run in runs) and self._running(rm)
        for run in runs:
            if state in TARGETS[run.kind]:
                self.finish(run, RunState.COMPLETED)
            elif state == FAILED:
                failed = RunState.FAILED if run.state == RunState.RUNNING else RunState.CANCELLED
                self.finish(run, failed, reason if failed == RunState.FAILED
                            else f"{rm.name or rm.get_rtype()} FAILED: {reason}")
            elif state == RELEASED:
                self.finish(run, RunState.CANCELLED, f"released before its {run.kind}")
        own = self._self_stop(rm) if self_stop else \
            self._self_stop(rm, failure=reason) if self_fail else None
        if own is not None and change.run_id is None:
            change = dataclasses.replace(change, run_id=own.id)
        self.recorder.resource_changed(change)

    def _change(self, rm: ResourceManager, state: ResourceState,
                runs: list[ActionRun]) -> ResourceChange:
        running = [run for run in runs if run.state == RunState.RUNNING]
        current = (running or runs or [None])[-1]
        done = state in (FAILED, RELEASED)
        return ResourceChange(
            rm.guid, rm.name, rm.get_rtype(), ResourceState2str[state], tnow(),
            current.id if current is not None else None,
            (rm.failure or f"{rm.get_rtype()} {rm.guid} FAILED") if state == FAILED else None,
            rm.get_metrics() if done else {}, dict(rm.collected) if state == RELEASED else {})

    def _running(self, rm: ResourceManager) -> bool:
        """Its start completed and nothing stopped it since."""
        start = self._latest.get((rm.guid, K.START))
        return start is not None and start.state == RunState.COMPLETED \
            and not self._stopped_since_start(rm)

    def _stopped_since_start(self, rm: ResourceManager) -> bool:
        # e.g. FINISHED after a stop already recorded: one stop per start
        stop, start = self._latest.get((rm.guid, K.STOP)), self._latest.get((rm.guid, K.START))
        return stop is not None and (start is None or stop.created_at >= start.created_at)

    def _self_stop(self, rm: ResourceManager, failure: str = "") -> ActionRun:
        """The RM stopped or finished with no stop asked for (it scheduled its own
        ``stop``, or its work ended), or failed by itself (``failure``): record it as a
        stop run like a user's, after its start; Failed with the reason if it failed."""
        start = self._latest.get((rm.guid, K.START))
        run = self.open(K.STOP, rm, [start] if start is not None else None)
        run.message = failure or "the resource stopped by itself"
        self.running(run)
        self.finish(run, RunState.FAILED if failure else RunState.COMPLETED)
        return run

    # -- reading -----------------------------------------------------------------
    def current(self, guid: int) -> ActionRun | None:
        """The run an RM is working on now (for log routing)."""
        runs = self._open.get(guid)
        if not runs:
            return None
        running = [r for r in runs if r.state == RunState.RUNNING]
        return (running or runs)[-1]

    def latest(self, guid: int, kind: ActionKind) -> ActionRun | None:
        return self._latest.get((guid, kind))

    def run_to(self, guid: int, state: int) -> ActionRun | None:
        """The run of ``guid`` that brings it to ``state`` (for a condition's edge)."""
        for kind in _RUNS_TO.get(state, ()):
            run = self._latest.get((guid, kind))
            if run is not None:
                return run
        return None

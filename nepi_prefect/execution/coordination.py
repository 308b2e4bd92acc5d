"""Coordination: conditional starts, stops and sets, deployment-group barriers,
and release order, all event driven through :mod:`~nepi_prefect.execution.watchers`.

A waiting action is a :class:`Pending` watching its own RM and the RMs of its
conditions. When everything holds it is dispatched at the exact due time, the
latest of ``stamp(state) + delay`` over its conditions. A condition on an RM
that FAILED never holds: the waiting RM fails, naming the failed one.
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from nepi_prefect.execution.conditions import Condition
from nepi_prefect.execution.dispatch import Dispatch
from nepi_prefect.execution.ledger import RunLedger
from nepi_prefect.execution.recording import ActionRun, RunState
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import (
    GATED,
    ActionKind,
    ResourceAction,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.execution.watchers import Watchers
from nepi_prefect.util.timefuncs import tnow

# The members as module globals: an enum member read off its class costs ten
# times more (Python 3.11), and these are read on every state change.
NEW, DISCOVERED, PROVISIONED, READY, STARTED, STOPPED, FINISHED, FAILED, RELEASED = ResourceState
K = ActionKind
Lookup = Callable[[int], ResourceManager]
#: a decided pending action: ("run", due time), ("drop", why) or ("fail", why)
Verdict = tuple[str, Any]


class Group:
    """A deployment group and its barrier: starts wait until every member is READY."""

    def __init__(self, gid: int, barrier_run: ActionRun | None, coordinator: "Coordinator"):
        self.id = gid
        self.members: list[int] = []
        self.waiting: set[int] = set()
        self.run = barrier_run           # None when the group has no barrier
        self.open = barrier_run is None
        self.pendings: list[Pending] = []
        self._coordinator = coordinator
        self._lock = threading.Lock()

    def wait_for(self, guids: Iterable[int]) -> None:
        """The barrier also waits for ``guids`` to be READY."""
        with self._lock:
            self.waiting.update(guids)

    def hold(self, pending: "Pending") -> None:
        """Re-check ``pending`` when the barrier opens."""
        with self._lock:
            self.pendings.append(pending)

    def on_state_changed(self, rm: ResourceManager) -> None:
        if self.open or rm.guid not in self.waiting:
            return
        if rm.recorded_state < READY and not rm.releasing:
            return  # a FAILED or releasing member counts as done
        with self._lock:
            self.waiting.discard(rm.guid)
            opening = not self.waiting and not self.open
            if opening:
                self.open = True
                pendings, self.pendings = self.pendings, []
        if opening:
            self._coordinator.watchers.drop(self, self.members)  # nothing left to watch
            self._coordinator.ledger.finish(self.run, RunState.COMPLETED)
            for pending in pendings:
                pending.check()


class Pending:
    """An action (start, stop or set) waiting for its RM's state and its conditions."""

    def __init__(self, coordinator: "Coordinator", rm: ResourceManager, kind: ActionKind,
                 conditions: list[Condition], run: ActionRun | None,
                 group: Group | None = None, apply: Callable[[], None] | None = None):
        self.coordinator, self.rm, self.kind = coordinator, rm, kind
        self.conditions = conditions
        self.run = run
        self.group = group
        self.apply = apply
        self.done = False
        self.lock = threading.Lock()

    def watched(self) -> set[int]:
        guids = {self.rm.guid}
        for cond in self.conditions:
            guids.update(cond.group)
        return guids

    def on_state_changed(self, rm: ResourceManager) -> None:
        self.check()

    def check(self) -> None:
        if self.done:
            return
        with self.lock:
            if self.done:
                return
            verdict = self._evaluate()
            if verdict is None:
                return
            self.done = True
        self.coordinator.settle(self, *verdict)

    def _evaluate(self) -> Verdict | None:
        """None to keep waiting, or the verdict."""
        own = self.rm.recorded_state
        if own in (FAILED, RELEASED) or self.rm.releasing:
            return ("drop", f"{self.rm.get_rtype()} {self.rm.guid} is "
                            f"{ResourceState2str[own]} before its {self.kind}")
        if self.kind == K.START:
            if own < READY:
                return None
            if own not in (READY, STOPPED):
                return ("drop", "already started")
            if self.group is not None and not self.group.open:
                return None
        elif own < STARTED:
            return None
        elif own != STARTED:
            return ("drop", f"{ResourceState2str[own]} before its {self.kind}")
        return self._due()

    def _due(self) -> Verdict | None:
        due: datetime = tnow()
        lookup = self.coordinator.lookup
        for cond in self.conditions:
            for guid in cond.group:
                dep = lookup(guid)
                state = dep.recorded_state
                if dep.failed_time is not None or state == FAILED:
                    return ("fail", f"its {self.kind} condition can never hold: "
                                    f"{dep.get_rtype()} {guid} FAILED")
                if state < cond.state:
                    return None
                stamp = dep.state_time(cond.state)
                if stamp is None:
                    return None
                if cond.delay:
                    due = max(due, stamp + timedelta(seconds=cond.delay))
        return ("run", due)


class ReleaseGate:
    """Holds an RM's release until the RMs it must outlive are RELEASED."""

    def __init__(self, coordinator: "Coordinator", rm: ResourceManager, after: list[int],
                 release: Callable[[], None]):
        self.coordinator, self.rm, self.after, self.release = coordinator, rm, after, release
        self.done = False
        self.lock = threading.Lock()

    def on_state_changed(self, rm: ResourceManager) -> None:
        self.check()

    def check(self) -> None:
        lookup = self.coordinator.lookup
        with self.lock:
            if self.done or any(lookup(g).recorded_state != RELEASED for g in self.after):
                return
            self.done = True
        self.coordinator.watchers.drop(self, self.after)
        self.release()


class Coordinator:
    """Plans conditional actions, keeps deployment groups, and orders releases.

    :param lookup: the RM of a guid
    :param is_running: whether the experiment still runs (a condition that can
        never hold fails its RM only then)
    :param fail_rm: fails an RM whose condition can never hold
    """

    def __init__(self, lookup: Lookup, ledger: RunLedger, dispatch: Dispatch,
                 is_running: Callable[[], bool], fail_rm: Callable[[ResourceManager], None]):
        self.lookup = lookup
        self.ledger = ledger
        self.watchers = Watchers()
        self._dispatch = dispatch
        self._is_running = is_running
        self._fail_rm = fail_rm
        self._pending: dict[tuple[int, ActionKind], Pending] = {}
        self._groups: dict[int, Group] = {}
        self._next_group = 1
        self._lock = threading.Lock()

    # -- deployment groups ----------------------------------------------------------
    def deploy(self, rms: list[ResourceManager], wait_all_ready: bool, group: int | None) -> None:
        """Deploy ``rms`` as (part of) one group, and plan their starts and stops."""
        grp = self._group_for(group, wait_all_ready)
        deploy_runs = {rm.guid: self.ledger.open(K.DEPLOY, rm) for rm in rms}
        with self._lock:
            for rm in rms:
                rm.deployment_group = grp.id
                grp.members.append(rm.guid)
        use_barrier = wait_all_ready and not grp.open
        if use_barrier:
            self._join_barrier(grp, rms, deploy_runs)
        # Every start is planned before any stop, so that a STOP condition's
        # edge points at the start run it really waits for.
        for rm in rms:
            self.plan(rm, K.START, grp if use_barrier else None)
        for rm in rms:
            if rm.conditions.get(ResourceAction.STOP):
                self.plan(rm, K.STOP)
        now = tnow()
        for rm in rms:
            self._dispatch.action_at(rm, K.DEPLOY, deploy_runs[rm.guid], now)

    def _group_for(self, group: int | None, wait_all_ready: bool) -> Group:
        with self._lock:
            if group is None:
                while self._next_group in self._groups:
                    self._next_group += 1
                group = self._next_group
            if group in self._groups:
                return self._groups[group]
        barrier = self.ledger.open_barrier(group) if wait_all_ready else None
        with self._lock:
            return self._groups.setdefault(group, Group(group, barrier, self))

    def _join_barrier(self, grp: Group, rms: list[ResourceManager],
                      deploy_runs: dict[int, ActionRun]) -> None:
        grp.wait_for(rm.guid for rm in rms)
        self.watchers.add(grp, [rm.guid for rm in rms])
        self.ledger.add_upstream(grp.run, [deploy_runs[rm.guid] for rm in rms])
        for rm in rms:
            grp.on_state_changed(rm)

    # -- conditional actions ----------------------------------------------------------
    def plan(self, rm: ResourceManager, kind: ActionKind, grp: Group | None = None) -> None:
        """Register a conditional start or stop of ``rm`` and its action run."""
        conditions = [Condition.of(c) for c in rm.conditions.get(_GATE[kind], ())]
        with self._lock:
            old = self._pending.get((rm.guid, kind))
            if old is not None and not old.done:
                return  # already planned
        upstream = [r for cond in conditions for g in cond.group
                    if (r := self.ledger.run_to(g, cond.state)) is not None]
        if grp is not None and grp.run is not None:
            upstream.insert(0, grp.run)
        run = self.ledger.open(kind, rm, upstream)
        pending = Pending(self, rm, kind, conditions, run, group=grp)
        with self._lock:
            self._pending[(rm.guid, kind)] = pending
        if grp is not None:
            grp.hold(pending)
        self._watch(pending)

    def plan_set(self, rm: ResourceManager, name: str, value: Any, condition: Condition) -> None:
        """Set ``name`` to ``value`` once ``rm`` is STARTED and ``condition`` holds."""
        apply = functools.partial(rm._set_value, name, value)
        self._watch(Pending(self, rm, K.SET, [condition], None, apply=apply))

    def take(self, rm: ResourceManager, kind: ActionKind) -> ActionRun | None:
        """Withdraw the planned ``kind`` of ``rm`` (it runs now instead); its run."""
        with self._lock:
            pending = self._pending.pop((rm.guid, kind), None)
        if pending is None or pending.done:
            return None
        pending.done = True
        self.watchers.drop(pending, pending.watched())
        return pending.run

    def _watch(self, pending: Pending) -> None:
        self.watchers.add(pending, pending.watched())
        pending.check()

    def _unwatch(self, pending: Pending) -> None:
        self.watchers.drop(pending, pending.watched())
        with self._lock:
            if self._pending.get((pending.rm.guid, pending.kind)) is pending:
                del self._pending[(pending.rm.guid, pending.kind)]

    def settle(self, pending: Pending, outcome: str, detail: Any) -> None:
        """A pending action is decided: run it (at ``detail``), drop it, or fail its RM."""
        self._unwatch(pending)
        rm = pending.rm
        if outcome == "run":
            if pending.kind == K.SET:
                self._dispatch.call_at(pending.apply, detail, owner=rm)
            else:
                self._dispatch.action_at(rm, pending.kind, pending.run, detail)
        elif outcome == "fail" and self._is_running():
            rm.error(detail)
            rm.failure = rm.failure or f"{rm.get_rtype()} {rm.guid}: {detail}"
            if pending.run is not None:
                pending.run.message = detail
            self._dispatch.call_at(functools.partial(self._fail_rm, rm), tnow(), owner=rm)
        elif pending.run is not None:
            self.ledger.settle(pending.run, rm.recorded_state, str(detail))

    def cancel_all(self, reason: str) -> None:
        """The experiment is aborted: every waiting action and barrier is cancelled."""
        with self._lock:
            pendings = list(self._pending.values())
            groups = list(self._groups.values())
        for pending in pendings:
            pending.done = True
            self._unwatch(pending)
            if pending.run is not None:
                self.ledger.finish(pending.run, RunState.CANCELLED, f"experiment aborted: {reason}")
        for grp in groups:
            if grp.run is not None:
                self.ledger.finish(grp.run, RunState.CANCELLED, f"experiment aborted: {reason}")

    # -- release order --------------------------------------------------------------------
    def release_after(self, rm: ResourceManager, after: list[int],
                      release: Callable[[], None]) -> None:
        """Call ``release`` once every RM of ``after`` is RELEASED (now if none)."""
        if not after:
            release()
            return
        gate = ReleaseGate(self, rm, after, release)
        self.watchers.add(gate, after)
        gate.check()


#: the condition action each planned kind is gated by
_GATE = {kind: action for action, kind in GATED.items()}

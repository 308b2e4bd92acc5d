"""The experiment controller (EC): the user's handle on one experiment run.

The EC registers resource managers, their attributes, connections and
conditions, deploys them, and drives each through NEW → DISCOVERED →
PROVISIONED → READY → STARTED → STOPPED/FINISHED (or FAILED) → RELEASED.

How it keeps its promises:

* Every RM action runs on the EC's timed dispatcher (a heap by time, then
  arrival, and a pool of workers).
* Conditions and group barriers are event driven. A waiting action holds no
  worker. It is re-checked when an RM it watches changes state, and it is
  dispatched at the exact time its condition comes true.
* Each deploy/start/stop/release is an :class:`ActionRun`. The recorder (by
  default the Prefect bridge) turns it into a task run.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import logging
import os
import signal
import threading
import traceback
import weakref
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from nepi_prefect import settings
from nepi_prefect.execution.attribute import Flags
from nepi_prefect.execution.errors import (
    ExperimentStateError,
    InvalidInputError,
    UnknownResourceError,
    listing,
)
from nepi_prefect.execution.recording import ActionRun, Recorder, RunState, default_recorder
from nepi_prefect.execution.resource import (
    ResourceAction,
    ResourceAction2str,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    ResourceState2str,
    STATE_TIME_ATTR,
)
from nepi_prefect.execution.scheduler import Task, TaskStatus, TimedDispatcher
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.util.timefuncs import parse_delay, stabsformat, tnow, tsformat

log = logging.getLogger("nepi_prefect.ec")

S = ResourceState
_FINAL_OUTCOMES = (S.FAILED, S.FINISHED, S.STOPPED, S.STARTED, S.READY,
                   S.PROVISIONED, S.DISCOVERED)
#: the states in which an action's goal is met
_TARGETS = {
    "deploy": frozenset({S.READY, S.STARTED, S.STOPPED, S.FINISHED}),
    "start": frozenset({S.STARTED, S.STOPPED, S.FINISHED}),
    "stop": frozenset({S.STOPPED, S.FINISHED}),
    "release": frozenset({S.RELEASED}),
}


class ECState:
    """State of the experiment controller."""

    RUNNING = 1
    FAILED = 2
    TERMINATED = 3


ECState2str = {1: "RUNNING", 2: "FAILED", 3: "TERMINATED"}


def _ensure_list(guids: int | Iterable[int] | None) -> list[int]:
    if guids is None:
        return []
    if isinstance(guids, int):
        return [guids]
    return list(guids)


class _Group:
    """A deployment group and its barrier: starts wait until every member is deployed."""

    def __init__(self, gid: int, barrier_run: ActionRun | None):
        self.id = gid
        self.members: list[int] = []
        self.waiting: set[int] = set()
        self.run = barrier_run           # None when the group has no barrier
        self.open = barrier_run is None
        self.watchers: list[_Pending] = []


class _Pending:
    """An action (start, stop or set) waiting for its conditions.

    It holds no thread: the EC calls :meth:`check` whenever an RM it watches
    changes state, and the action is dispatched once everything holds.
    """

    def __init__(self, ec: "ExperimentController", rm: ResourceManager, kind: str,
                 conditions: list[tuple[list[int], int, Any]], run: ActionRun | None,
                 group: _Group | None = None, apply: Callable[[], None] | None = None):
        self.ec, self.rm, self.kind = ec, rm, kind
        self.conditions = conditions
        self.run = run
        self.group = group
        self.apply = apply
        self.done = False
        self.lock = threading.Lock()

    def watched(self) -> set[int]:
        guids = {self.rm.guid}
        for group, _, _ in self.conditions:
            guids.update(group)
        return guids

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
        self.ec._settle(self, *verdict)

    def _evaluate(self) -> tuple[str, Any] | None:
        """None to keep waiting, or (outcome, detail)."""
        own = self.rm._rm_state
        if own in (S.FAILED, S.RELEASED) or self.rm._releasing:
            return ("drop", f"{self.rm.get_rtype()} {self.rm.guid} is "
                            f"{ResourceState2str[own]} before its {self.kind}")
        if self.kind == "start":
            if own < S.READY:
                return None
            if own not in (S.READY, S.STOPPED):
                return ("drop", "already started")
            if self.group is not None and not self.group.open:
                return None
        elif own < S.STARTED:
            return None
        elif own != S.STARTED:
            return ("drop", f"{ResourceState2str[own]} before its {self.kind}")
        due = tnow()
        for group, state, delay in self.conditions:
            for guid in group:
                dep = self.ec._resources[guid]
                if dep._failed_time is not None or dep._rm_state == S.FAILED:
                    return ("fail", f"its {self.kind} condition can never hold: "
                                    f"{dep.get_rtype()} {guid} FAILED")
                if dep._rm_state < state:
                    return None
                stamp = dep.state_time(state)
                if stamp is None:
                    return None
                if delay:
                    due = max(due, stamp + timedelta(seconds=delay))
        return ("run", due)


class ExperimentController:
    """Describe, deploy and run one experiment; NEPI's API.

    :param exp_id: names the experiment; runs of the same experiment share it
        (default: ``exp-`` and 16 random hex digits)
    :param local_dir: where results of runs are stored (default
        ``$NEPI_PREFECT_RESULTS`` or ``~/.nepi-prefect/experiments``)
    :param nthreads: dispatcher workers (default ``$NEPI_NTHREADS`` or 50)
    :param recorder: where the run is recorded (default: the Prefect bridge,
        or nothing when ``NEPI_PREFECT_RECORDER=none``)
    :param release_timeout: seconds ``release()`` waits for RMs before giving up
    """

    def __init__(self, exp_id: str | None = None, local_dir: str | None = None,
                 nthreads: int | None = None, recorder: Recorder | None = None,
                 release_timeout: float = 600.0, run_id: str | None = None):
        self._exp_id = exp_id or f"exp-{os.urandom(8).hex()}"
        self._run_id = run_id or tsformat()
        self._local_dir = settings.results_root(local_dir)
        self._state = ECState.RUNNING
        self._failure: str | None = None
        self._resources: dict[int, ResourceManager] = {}
        self._next_guid = 1
        self._groups: dict[int, _Group] = {}
        self._next_group = 1
        self._tasks: dict[int, Task] = {}
        self._watchers: dict[int, list[Any]] = collections.defaultdict(list)
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._runs: dict[int, list[ActionRun]] = collections.defaultdict(list)
        self._latest: dict[tuple[int, str], ActionRun] = {}
        self._secrets: set[str] = set()
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        self._version = 0
        self._local = threading.local()
        self._release_timeout = release_timeout
        self._closed = False
        self._logger = logging.getLogger("ExperimentController")
        self._dispatcher = TimedDispatcher(self._run_task, nthreads=settings.nthreads(nthreads),
                                           name=f"nepi-{self._exp_id[:12]}")
        self._recorder = recorder if recorder is not None else default_recorder()
        self._recorder.open(self)
        _register_exit_guard(self)

    # -- identity and state -------------------------------------------------
    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def exp_id(self) -> str:
        return self._exp_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def local_dir(self) -> str:
        return self._local_dir

    @property
    def exp_dir(self) -> str:
        return os.path.join(self._local_dir, self._exp_id)

    @property
    def run_dir(self) -> str:
        """Where this run's collected results go: ``<local_dir>/<exp_id>/<run_id>``."""
        return os.path.join(self.exp_dir, self._run_id)

    @property
    def ecstate(self) -> int:
        return self._state

    @property
    def finished(self) -> bool:
        """True once the EC is FAILED or TERMINATED."""
        return self._state in (ECState.FAILED, ECState.TERMINATED)

    @property
    def failure(self) -> str | None:
        """Why the experiment failed, or None if it did not (kept after shutdown)."""
        return self._failure

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    # -- resources ----------------------------------------------------------
    @property
    def resources(self) -> list[int]:
        return list(self._resources)

    def get_resource(self, guid: int) -> ResourceManager:
        try:
            return self._resources[guid]
        except (KeyError, TypeError):
            raise UnknownResourceError(
                f"no resource with guid {guid!r}; registered guids: "
                f"{listing(self._resources) if len(self._resources) < 50 else f'1..{max(self._resources)}'}"
            ) from None

    def _rms(self, guids: int | Iterable[int] | None) -> list[ResourceManager]:
        return [self.get_resource(g) for g in _ensure_list(guids)]

    def register_resource(self, rtype: str, guid: int | None = None) -> int:
        """Create an RM of ``rtype``; returns its guid."""
        rclass = ResourceFactory.get_resource_type(rtype)
        with self._lock:
            if guid is None:
                guid = self._next_guid
            elif not isinstance(guid, int) or isinstance(guid, bool) or guid < 0:
                raise InvalidInputError(f"a guid is a non-negative integer, got {guid!r}")
            elif guid in self._resources:
                raise InvalidInputError(f"guid {guid} is already taken by {self._resources[guid]!r}")
            self._next_guid = max(self._next_guid, guid + 1)
            self._resources[guid] = rclass(self, guid)
        return guid

    def get_attributes(self, guid: int) -> list:
        return self.get_resource(guid).get_attributes()

    def get(self, guid: int, name: str) -> Any:
        return self.get_resource(guid).get(name)

    def set(self, guid: int, name: str, value: Any) -> Any:
        """Set an attribute (validated now; Design attributes only before deploy)."""
        rm = self.get_resource(guid)
        if rm.get_attribute(name).has_flag(Flags.NoWrite):
            raise InvalidInputError(f"{rm.get_rtype()} {guid}: {name!r} is read-only")
        return rm.set(name, value)

    def register_connection(self, guid1: int, guid2: int) -> None:
        """Connect two RMs (order does not matter)."""
        rm1, rm2 = self.get_resource(guid1), self.get_resource(guid2)
        rm1.register_connection(guid2)
        try:
            rm2.register_connection(guid1)
        except Exception:
            rm1.unregister_connection(guid2)
            raise

    def unregister_connection(self, guid1: int, guid2: int) -> None:
        self.get_resource(guid1).unregister_connection(guid2)
        self.get_resource(guid2).unregister_connection(guid1)

    # -- conditions -----------------------------------------------------------
    def _check_condition(self, action: int, guids2: list[int], state: int, time: Any,
                         actions: tuple[int, ...] = (ResourceAction.START, ResourceAction.STOP)
                         ) -> float:
        if action not in actions:
            raise InvalidInputError(
                f"unknown or unsupported action {action!r}; valid: "
                + ", ".join(f"ResourceAction.{ResourceAction2str[a]} ({a})" for a in actions))
        if state not in ResourceState2str or isinstance(state, bool):
            raise InvalidInputError(
                f"unknown state {state!r}; valid: "
                + ", ".join(f"ResourceState.{n} ({v})" for v, n in ResourceState2str.items()))
        if state == S.FAILED:
            raise InvalidInputError("a condition cannot wait for FAILED: a failed RM never satisfies one")
        if not guids2:
            raise InvalidInputError("a condition needs at least one guid to wait for")
        self._rms(guids2)
        return self._delay_seconds(time)

    @staticmethod
    def _delay_seconds(time: Any) -> float:
        if time is None:
            return 0.0
        try:
            return parse_delay(time)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    def register_condition(self, guids1, action: int, guids2, state: int,
                           time: str | None = None) -> None:
        """``action`` (START or STOP) of every RM in ``guids1`` waits until every
        RM in ``guids2`` reached ``state``, plus ``time`` counted from when each did."""
        guids1, guids2 = _ensure_list(guids1), _ensure_list(guids2)
        self._check_condition(action, guids2, state, time)
        for rm in self._rms(guids1):
            rm.register_condition(action, guids2, state, time)

    def set_with_conditions(self, name: str, value: Any, guids1, guids2, state: int,
                            time: str | None = None) -> None:
        """Set ``name`` to ``value`` on ``guids1`` once they are STARTED and every RM
        in ``guids2`` reached ``state`` (plus ``time``)."""
        guids1, guids2 = _ensure_list(guids1), _ensure_list(guids2)
        delay = self._check_condition(ResourceAction.START, guids2, state, time)
        for rm in self._rms(guids1):
            value = rm.get_attribute(name).validate(value)
            apply = functools.partial(rm._set_value, name, value)
            pending = _Pending(self, rm, "set", [(guids2, state, delay)], None, apply=apply)
            self._watch(pending)

    # -- traces ---------------------------------------------------------------
    def enable_trace(self, guid: int, name: str) -> None:
        self.get_resource(guid).enable_trace(name)

    def trace_enabled(self, guid: int, name: str) -> bool:
        return self.get_resource(guid).trace_enabled(name)

    def trace(self, guid: int, name: str, attr: str = TraceAttr.ALL, block: int = 512,
              offset: int = 0) -> Any:
        """Read a trace: ALL (content), STREAM (``block`` bytes after ``offset``
        blocks), PATH (its path on the host) or SIZE (bytes)."""
        rm = self.get_resource(guid)
        rm.get_trace(name)
        if attr not in TraceAttr.VALUES:
            raise InvalidInputError(f"unknown trace attribute {attr!r}; valid: {listing(TraceAttr.VALUES)}")
        if attr == TraceAttr.STREAM and (block <= 0 or offset < 0):
            raise InvalidInputError(f"STREAM needs block > 0 and offset >= 0, got block={block} offset={offset}")
        return rm.trace(name, attr, block, offset)

    # -- single actions ---------------------------------------------------------
    def state(self, guid: int, hr: bool = False) -> int | str:
        state = self.get_resource(guid).state
        return ResourceState2str.get(state) if hr else state

    def discover(self, guid: int) -> Any:
        return self.get_resource(guid).discover()

    def provision(self, guid: int) -> Any:
        return self.get_resource(guid).provision()

    def start(self, guid: int) -> Any:
        """Start an RM now, in this thread (it must be READY or STOPPED)."""
        rm = self.get_resource(guid)
        if rm.state not in (S.READY, S.STOPPED):
            raise ExperimentStateError(
                f"{rm.get_rtype()} {guid} is {ResourceState2str[rm.state]}; "
                f"it can start only from READY or STOPPED")
        return self._act_now(rm, "start")

    def stop(self, guid: int) -> Any:
        """Stop an RM now, in this thread; nothing to do unless it is STARTED."""
        rm = self.get_resource(guid)
        if rm.state != S.STARTED:
            rm.debug(f"stop ignored in state {ResourceState2str[rm.state]}")
            return None
        return self._act_now(rm, "stop")

    def _act_now(self, rm: ResourceManager, kind: str) -> Any:
        pending = self._pending.pop((rm.guid, kind), None)
        run = None
        if pending is not None and not pending.done:
            pending.done = True
            run = pending.run
        run = run or self._new_run(kind, rm, [])
        previous = getattr(self._local, "owner", None)
        self._local.owner = rm
        try:
            return self._execute_action(rm, kind, run)
        except Exception:
            self._rm_raised(rm, traceback.format_exc())
            raise
        finally:
            self._local.owner = previous

    def start_with_conditions(self, guid: int) -> None:
        """Start the RM once it is READY and its START conditions hold."""
        self._plan(self.get_resource(guid), "start", None)

    def stop_with_conditions(self, guid: int) -> None:
        """Stop the RM once it is STARTED and its STOP conditions hold."""
        self._plan(self.get_resource(guid), "stop", None)

    # -- deployment ---------------------------------------------------------------
    def deploy(self, guids=None, wait_all_ready: bool = True, group: int | None = None) -> None:
        """Deploy RMs (default: every RM still NEW) as one group, and start them.

        With ``wait_all_ready`` the starts of the group wait until every member
        is READY. Deploying into an existing ``group`` joins it; members already
        started are not started again.
        """
        self._require_running("deploy")
        guids = _ensure_list(guids)
        if guids:
            rms = [rm for rm in self._rms(guids) if rm.deployment_group is None]
        else:
            rms = [rm for rm in self._resources.values()
                   if rm.state == S.NEW and rm.deployment_group is None]
        if not rms:
            return
        grp = self._group_for(group, wait_all_ready)
        deploy_runs = {rm.guid: self._new_run("deploy", rm, []) for rm in rms}
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
            self._plan(rm, "start", grp if use_barrier else None)
        for rm in rms:
            if rm.conditions.get(ResourceAction.STOP):
                self._plan(rm, "stop", None)
        for rm in rms:
            self._schedule_action(rm, "deploy", deploy_runs[rm.guid], tnow())

    def _group_for(self, group: int | None, wait_all_ready: bool) -> _Group:
        with self._lock:
            if group is None:
                while self._next_group in self._groups:
                    self._next_group += 1
                group = self._next_group
            if group in self._groups:
                return self._groups[group]
            barrier = ActionRun("barrier", group, "group") if wait_all_ready else None
            grp = self._groups[group] = _Group(group, barrier)
        if barrier is not None:
            self._recorder.action_changed(barrier)
        return grp

    def _join_barrier(self, grp: _Group, rms: list[ResourceManager],
                      deploy_runs: dict[int, ActionRun]) -> None:
        with self._lock:
            for rm in rms:
                grp.waiting.add(rm.guid)
                grp.run.upstream.append(deploy_runs[rm.guid])
        self._add_watcher(grp, [rm.guid for rm in rms])
        self._recorder.action_changed(grp.run)
        for rm in rms:
            self._barrier_check(grp, rm)

    def _barrier_check(self, grp: _Group, rm: ResourceManager) -> None:
        if grp.open or rm.guid not in grp.waiting:
            return
        if rm._rm_state < S.READY and not rm._releasing:
            return
        with self._lock:
            grp.waiting.discard(rm.guid)
            opening = not grp.waiting and not grp.open
            if opening:
                grp.open = True
                watchers, grp.watchers = grp.watchers, []
        if opening:
            self._finish_run(grp.run, RunState.COMPLETED)
            for pending in watchers:
                pending.check()

    def _plan(self, rm: ResourceManager, kind: str, grp: _Group | None) -> None:
        """Register a conditional start or stop of ``rm`` and its action run."""
        action = ResourceAction.START if kind == "start" else ResourceAction.STOP
        conditions = [(list(g), state, self._delay_seconds(t))
                      for g, state, t in rm.conditions.get(action, [])]
        upstream = [self._run_for_state(g, state) for group_, state, _ in conditions for g in group_]
        upstream = [r for r in upstream if r is not None]
        if grp is not None and grp.run is not None:
            upstream.insert(0, grp.run)
        old = self._pending.get((rm.guid, kind))
        if old is not None and not old.done:
            return  # already planned
        run = self._new_run(kind, rm, upstream)
        pending = _Pending(self, rm, kind, conditions, run, group=grp)
        self._pending[(rm.guid, kind)] = pending
        if grp is not None:
            with self._lock:
                grp.watchers.append(pending)
        self._watch(pending)

    def _run_for_state(self, guid: int, state: int) -> ActionRun | None:
        """The action run of ``guid`` that brings it to ``state`` (for the edge)."""
        kinds = {S.DISCOVERED: ("deploy",), S.PROVISIONED: ("deploy",), S.READY: ("deploy",),
                 S.STARTED: ("start", "deploy"), S.STOPPED: ("stop", "start", "deploy"),
                 S.FINISHED: ("stop", "start", "deploy"), S.RELEASED: ("release", "stop", "start")}
        for kind in kinds.get(state, ()):
            run = self._latest.get((guid, kind))
            if run is not None:
                return run
        return None

    def _add_watcher(self, watcher: Any, guids: Iterable[int]) -> None:
        """Have ``watcher`` told of every state change of ``guids``."""
        with self._lock:
            for guid in guids:
                self._watchers[guid].append(watcher)

    def _drop_watcher(self, watcher: Any, guids: Iterable[int]) -> None:
        with self._lock:
            for guid in guids:
                lst = self._watchers.get(guid)
                if lst and watcher in lst:
                    lst.remove(watcher)

    def _watch(self, pending: _Pending) -> None:
        self._add_watcher(pending, pending.watched())
        pending.check()

    def _unwatch(self, pending: _Pending) -> None:
        self._drop_watcher(pending, pending.watched())
        with self._lock:
            if self._pending.get((pending.rm.guid, pending.kind)) is pending:
                del self._pending[(pending.rm.guid, pending.kind)]

    def _settle(self, pending: _Pending, outcome: str, detail: Any) -> None:
        """A pending action is decided: run it (at ``detail``), drop it, or fail its RM."""
        self._unwatch(pending)
        rm = pending.rm
        if outcome == "run":
            if pending.kind == "set":
                self._schedule_callback(pending.apply, detail, owner=rm)
            else:
                self._schedule_action(rm, pending.kind, pending.run, detail)
        elif outcome == "fail" and self._state == ECState.RUNNING:
            rm.error(detail)
            rm.failure = rm.failure or f"{rm.get_rtype()} {rm.guid}: {detail}"
            if pending.run is not None:
                pending.run.message = detail
            self._schedule_callback(functools.partial(self._fail_rm, rm), tnow(), owner=rm)
        elif pending.run is not None and not pending.run.state.is_final:
            reached = rm._rm_state in _TARGETS[pending.kind]
            self._finish_run(pending.run, RunState.COMPLETED if reached else RunState.CANCELLED,
                             "" if reached else str(detail))

    def _fail_rm(self, rm: ResourceManager) -> None:
        if rm._rm_state not in (S.FAILED, S.RELEASED):
            rm.fail()

    # -- dispatching -----------------------------------------------------------------
    def schedule(self, date: Any, callback: Callable[[], Any], track: bool = False) -> int:
        """Run ``callback`` at ``date`` ("0s", "1.5s", "100ms", ... or an absolute date)
        on the dispatcher; returns a task id (retrievable with ``get_task`` if ``track``)."""
        if not callable(callback):
            raise InvalidInputError(f"schedule() needs a callable, got {callback!r}")
        try:
            when = stabsformat(date)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        task = self._schedule_callback(callback, when)
        if track:
            self._tasks[task.id] = task
        return task.id

    def _schedule_callback(self, callback: Callable[[], Any], when: datetime,
                           owner: ResourceManager | None = None, action: str | None = None) -> Task:
        task = Task(when, callback)
        task.owner = owner or self._owner_of(callback)
        task.action = action
        return self._dispatcher.schedule(task)

    def _owner_of(self, callback: Callable) -> ResourceManager | None:
        target = callback
        while isinstance(target, functools.partial):
            target = target.func
        owner = getattr(target, "__self__", None)
        if isinstance(owner, ResourceManager):
            return owner
        return getattr(self._local, "owner", None)

    def get_task(self, tid: int) -> Task | None:
        return self._tasks.get(tid)

    def _schedule_action(self, rm: ResourceManager, kind: str, run: ActionRun,
                         when: datetime) -> None:
        if (when - tnow()).total_seconds() > 0.001 and run.state == RunState.PENDING:
            run.state, run.scheduled_for = RunState.SCHEDULED, when
            self._recorder.action_changed(run)
        callback = functools.partial(self._execute_action, rm, kind, run)
        self._schedule_callback(callback, when, owner=rm, action=kind)

    def _execute_action(self, rm: ResourceManager, kind: str, run: ActionRun) -> Any:
        if run.state.is_final:
            return None
        state = rm._rm_state
        if kind == "start" and state not in (S.READY, S.STOPPED) or \
                kind == "stop" and state != S.STARTED:
            reached = state in _TARGETS[kind]
            self._finish_run(run, RunState.COMPLETED if reached else RunState.CANCELLED,
                             "" if reached else f"{ResourceState2str[state]} before {kind}")
            return None
        self._mark_running(run)
        return getattr(rm, kind)()

    def _run_task(self, task: Task) -> None:
        """The dispatcher's hook: run one task for its owner, trapping failures."""
        owner: ResourceManager | None = task.owner
        if owner is not None and task.action != "release" and (
                owner._releasing or owner._rm_state in (S.FAILED, S.RELEASED)):
            task.status = TaskStatus.DONE  # the RM is gone: its leftover polling is moot
            return
        self._local.owner = owner
        try:
            task.result = task.callback()
            task.status = TaskStatus.DONE
        except Exception:
            task.result = traceback.format_exc()
            task.status = TaskStatus.ERROR
            if owner is not None:
                self._rm_raised(owner, task.result)
            else:
                self._logger.error("scheduled task %s raised:\n%s", task.id, self.redact(task.result))
        finally:
            self._local.owner = None

    def _rm_raised(self, rm: ResourceManager, tb: str) -> None:
        rm.error(f"failed:\n{tb}")
        if rm._rm_state in (S.FAILED, S.RELEASED):
            return
        if not rm.failure:  # the exception's own line: "TransportError: ... exit code 8: ..."
            rm.failure = self.redact(tb.strip().splitlines()[-1])
        try:
            rm.fail()
        except Exception:
            rm.error(f"fail() raised too:\n{traceback.format_exc()}")
        if rm._rm_state not in (S.FAILED, S.RELEASED):
            rm.set_failed()

    # -- action runs -------------------------------------------------------------------
    def _new_run(self, kind: str, rm: ResourceManager, upstream: list[ActionRun]) -> ActionRun:
        run = ActionRun(kind, rm.guid, rm.get_rtype(), upstream)
        with self._lock:
            self._runs[rm.guid].append(run)
            self._latest[(rm.guid, kind)] = run
        self._recorder.action_changed(run)
        return run

    def _mark_running(self, run: ActionRun) -> None:
        if run.state in (RunState.PENDING, RunState.SCHEDULED):
            run.state, run.started_at = RunState.RUNNING, tnow()
            self._recorder.action_changed(run)

    def _finish_run(self, run: ActionRun, state: RunState, message: str = "") -> None:
        with self._lock:
            if run.state.is_final:
                return
            run.state, run.ended_at = state, tnow()
            if message and not run.message:
                run.message = message
            runs = self._runs.get(run.guid)
            if runs and run in runs:
                runs.remove(run)
        self._recorder.action_changed(run)

    def _update_runs(self, rm: ResourceManager, state: int) -> None:
        for run in list(self._runs.get(rm.guid, ())):
            if state in _TARGETS[run.kind]:
                self._finish_run(run, RunState.COMPLETED)
            elif state == S.FAILED:
                failed = RunState.FAILED if run.state == RunState.RUNNING else RunState.CANCELLED
                self._finish_run(run, failed, f"{rm.get_rtype()} {rm.guid} FAILED")
            elif state == S.RELEASED:
                self._finish_run(run, RunState.CANCELLED, f"released before its {run.kind}")

    def current_run(self, rm: ResourceManager) -> ActionRun | None:
        """The action run an RM is working on now (for log routing)."""
        runs = self._runs.get(rm.guid)
        if not runs:
            return None
        running = [r for r in runs if r.state == RunState.RUNNING]
        return (running or runs)[-1]

    # -- state changes -------------------------------------------------------------------
    def _state_changed(self, rm: ResourceManager) -> None:
        """Called by an RM each time its state changes."""
        state = rm._rm_state
        self._update_runs(rm, state)
        if state == S.FAILED:
            self._on_failure(rm)
        for watcher in list(self._watchers.get(rm.guid, ())):
            if isinstance(watcher, _Group):
                self._barrier_check(watcher, rm)
            else:
                watcher.check()
        self._notify_waiters()

    def _notify_waiters(self) -> None:
        """Wake every wait(): something they may be waiting for changed."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _on_failure(self, rm: ResourceManager) -> None:
        if self._state != ECState.RUNNING:
            return
        try:
            critical = rm.get("critical")
        except Exception:
            critical = True
        if critical:
            self._abort(f"critical resource {rm.get_rtype()} {rm.guid} FAILED")
        else:
            rm.warning("FAILED; it is not critical, the experiment goes on")

    def abort(self, reason: str) -> None:
        """Fail the experiment now (e.g. a timeout ran out): pending actions are
        cancelled, every RM is released, and every wait returns."""
        self._abort(reason)

    def _abort(self, reason: str) -> None:
        """Fail the experiment: stop pending work and release every RM."""
        with self._lock:
            if self._state != ECState.RUNNING:
                return
            self._state = ECState.FAILED
            self._failure = reason
            pendings = list(self._pending.values())
            groups = list(self._groups.values())
        self._logger.error("experiment %s failed: %s; releasing every resource", self._exp_id, reason)
        self._recorder.log(None, logging.ERROR, f"experiment failed: {reason}")
        for pending in pendings:
            pending.done = True
            self._unwatch(pending)
            if pending.run is not None:
                self._finish_run(pending.run, RunState.CANCELLED, f"experiment aborted: {reason}")
        for grp in groups:
            if grp.run is not None:
                self._finish_run(grp.run, RunState.CANCELLED, f"experiment aborted: {reason}")
        self._notify_waiters()
        self._release_async(list(self._resources))

    def _require_running(self, what: str) -> None:
        if self._state != ECState.RUNNING:
            raise ExperimentStateError(
                f"cannot {what}: the experiment is {ECState2str[self._state]}"
                + (f" ({self._failure})" if self._failure else ""))

    # -- waiting ------------------------------------------------------------------------
    def wait(self, guids, states: Iterable[int] = (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED),
             timeout: float | None = None) -> bool:
        """Block until every RM in ``guids`` is in one of ``states``, or the EC is
        FAILED or TERMINATED. Returns False only if ``timeout`` passed first."""
        return self._wait(guids, states, timeout, stop_when_finished=True)

    def _wait(self, guids, states: Iterable[int], timeout: float | None,
              stop_when_finished: bool) -> bool:
        states = set(states)
        bad = [s for s in states if s not in ResourceState2str]
        if bad:
            raise InvalidInputError(f"unknown state(s) {bad}; valid: {listing(ResourceState2str.values())}")
        waiting = collections.deque(rm.guid for rm in self._rms(guids))
        deadline = None if timeout is None else tnow() + timedelta(seconds=timeout)
        while True:
            seen = self._version
            # ``rm.state`` may be a property that refreshes itself (NEPI RMs do
            # that), so it is read here, outside any lock.
            while waiting and self._resources[waiting[0]].state in states:
                waiting.popleft()
            if not waiting or (stop_when_finished and self.finished):
                return True
            left = None if deadline is None else (deadline - tnow()).total_seconds()
            if left is not None and left <= 0:
                return False
            with self._changed:
                if self._version == seen:
                    # State changes wake us at once; the timeout re-reads RMs
                    # whose state is computed lazily when read.
                    self._changed.wait(0.5 if left is None else min(0.5, left))

    def wait_started(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.STARTED, S.STOPPED, S.FINISHED, S.FAILED, S.RELEASED), timeout)

    def wait_finished(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED), timeout)

    def wait_released(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.RELEASED,), timeout)

    def wait_deployed(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.READY, S.STARTED, S.STOPPED, S.FINISHED, S.FAILED, S.RELEASED), timeout)

    # -- release and shutdown -----------------------------------------------------------
    def release(self, guids=None) -> None:
        """Release the RMs (default: all) and wait until they are RELEASED."""
        rms = self._rms(guids) if guids not in (None, []) else list(self._resources.values())
        releasing = set(self._release_async([rm.guid for rm in rms]))
        rms += [self._resources[g] for g in releasing - {rm.guid for rm in rms}]
        if not self._wait([rm.guid for rm in rms], (S.RELEASED,), self._release_timeout,
                          stop_when_finished=False):
            stuck = [rm for rm in rms if rm._rm_state != S.RELEASED]
            self._logger.error("release timed out after %ss; not released: %s",
                               self._release_timeout, stuck)
            for rm in stuck:
                rm.set_released()

    def _release_async(self, guids: list[int]) -> list[int]:
        """Schedule the release of ``guids`` and of the RMs they take along
        (``release_dependents``); returns every guid now releasing.

        An RM waits for those of its ``release_after()`` RMs that are being
        released too; one that stays (a Collector of other apps) is not waited for.
        """
        todo = []
        with self._lock:
            queue = collections.deque(guids)
            while queue:
                rm = self._resources[queue.popleft()]
                if rm._releasing or rm._rm_state == S.RELEASED:
                    continue
                rm._releasing = True
                todo.append(rm)
                queue.extend(g for g in rm.release_dependents() if g in self._resources)
        runs = {rm.guid: self._new_run("release", rm, []) for rm in todo}
        for rm in todo:
            after = [g for g in rm.release_after() if g in self._resources
                     and self._resources[g]._releasing
                     and self._resources[g]._rm_state != S.RELEASED]
            run = runs[rm.guid]
            run.upstream = [r for g in after
                            if (r := runs.get(g) or self._latest.get((g, "release")))]
            if run.upstream:
                self._recorder.action_changed(run)
            self._wait_then_release(rm, run, after)
        return list(runs)

    def _wait_then_release(self, rm: ResourceManager, run: ActionRun, after: list[int]) -> None:
        if not after:
            self._schedule_callback(functools.partial(self._execute_release, rm, run),
                                    tnow(), owner=rm, action="release")
            return
        gate = _ReleaseGate(self, rm, run, after)
        self._add_watcher(gate, after)
        gate.check()

    def _execute_release(self, rm: ResourceManager, run: ActionRun) -> None:
        self._mark_running(run)
        try:
            rm.release()
        except Exception:
            tb = traceback.format_exc()
            rm.error(f"release failed:\n{tb}")
            self._finish_run(run, RunState.FAILED, f"release raised: {tb.strip().splitlines()[-1]}")
        finally:
            if rm._rm_state != S.RELEASED:
                rm.set_released()

    def shutdown(self) -> None:
        """Release every RM, mark the EC TERMINATED and stop the dispatcher."""
        if self._closed:
            return
        self._closed = True
        try:
            self.release()
        finally:
            with self._lock:
                self._state = ECState.TERMINATED
            self._notify_waiters()
            self._dispatcher.stop()
            summary = self.summary()
            self._write_summary(summary)
            self._recorder.close(self, summary)
            _unregister_exit_guard(self)

    def _abandon(self, reason: str) -> None:
        """The process exits without shutdown(): release what we can, close the record."""
        if self._closed:
            return
        self._logger.warning("experiment %s: %s; releasing its resources", self._exp_id, reason)
        self._release_timeout = min(self._release_timeout, 30.0)
        self._recorder.abandon(self, reason)
        self.shutdown()

    # -- summary and logging ---------------------------------------------------------------
    @staticmethod
    def outcome(rm: ResourceManager) -> str:
        """The furthest state an RM reached before release (FAILED wins)."""
        for state in _FINAL_OUTCOMES:
            if getattr(rm, STATE_TIME_ATTR[state]) is not None:
                return ResourceState2str[state]
        return ResourceState2str[rm._rm_state]

    def summary(self) -> dict[str, Any]:
        """What happened, RM by RM: rtype, guid, outcome, transition times, traces."""
        resources = []
        for guid, rm in sorted(self._resources.items()):
            stamps = {attr.lstrip("_"): getattr(rm, attr) for attr in STATE_TIME_ATTR.values()}
            times = {name: stamp.isoformat() if stamp else None for name, stamp in stamps.items()}
            resources.append({
                "guid": guid, "rtype": rm.get_rtype(), "state": self.outcome(rm),
                "times": times, "traces": dict(rm.collected), "metrics": rm.get_metrics(),
                "failure": rm.failure,
            })
        summary = {"exp_id": self._exp_id, "run_id": self._run_id,
                   "state": "FAILED" if self._failure else "COMPLETED",
                   "failure": self._failure, "run_dir": self.run_dir, "resources": resources}
        hosts = [report for rm in self._resources.values()
                 if (report := rm.host_report()) is not None]
        if hosts:  # which hosts did their part and which failed, and why
            summary["hosts"] = sorted(hosts, key=lambda h: h["guid"])
        return summary

    def _write_summary(self, summary: dict[str, Any]) -> None:
        """Keep ``summary.json`` in the run directory (``nepi-prefect results`` reads it)."""
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "summary.json"), "w") as out:
                json.dump(summary, out, indent=2, default=str)
        except OSError as exc:
            self._logger.warning("could not write the run summary in %s: %s", self.run_dir, exc)

    def redact(self, text: str) -> str:
        """``text`` with every Credential attribute value of this experiment masked."""
        for secret in self._secrets:
            if secret and secret in text:
                text = text.replace(secret, "********")
        return text

    def _log_for(self, rm: ResourceManager | None, level: int, text: str) -> None:
        text = self.redact(text)
        logger = rm.logger if rm is not None else self._logger
        logger.log(level, text)
        if level >= self._recorder.log_level:
            self._recorder.log(self.current_run(rm) if rm is not None else None, level, text)

    # -- persistence (descriptions live in nepi_prefect.spec) -------------------------------
    def save(self, path: str) -> str:
        """Write this experiment's description (YAML or JSON by extension)."""
        from nepi_prefect.spec.io import save_experiment
        return save_experiment(self, path)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "ExperimentController":
        """A new EC holding the experiment described in ``path``."""
        from nepi_prefect.spec.io import load_experiment
        return load_experiment(path, **kwargs)


class _ReleaseGate:
    """Holds an RM's release until the RMs it must outlive are RELEASED."""

    def __init__(self, ec: ExperimentController, rm: ResourceManager, run: ActionRun,
                 after: list[int]):
        self.ec, self.rm, self.run, self.after = ec, rm, run, after
        self.done = False
        self.lock = threading.Lock()

    def check(self) -> None:
        with self.lock:
            if self.done or any(self.ec._resources[g]._rm_state != S.RELEASED for g in self.after):
                return
            self.done = True
        self.ec._drop_watcher(self, self.after)
        self.ec._wait_then_release(self.rm, self.run, [])


# -- leaving the process -------------------------------------------------------------------
_live: "weakref.WeakSet[ExperimentController]" = weakref.WeakSet()
_guard_lock = threading.Lock()
_guard_installed = False


def _register_exit_guard(ec: ExperimentController) -> None:
    """Make sure an EC left without shutdown() is released and closed at exit."""
    global _guard_installed
    with _guard_lock:
        _live.add(ec)
        if _guard_installed:
            return
        _guard_installed = True
    atexit.register(_close_abandoned)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM would end the process without running atexit; make it an exit.
    raise SystemExit(128 + signum)


def _unregister_exit_guard(ec: ExperimentController) -> None:
    _live.discard(ec)


def _close_abandoned() -> None:
    for ec in list(_live):
        try:
            ec._abandon("the process exited without calling shutdown()")
        except Exception:
            log.exception("could not close experiment %s at exit", ec.exp_id)

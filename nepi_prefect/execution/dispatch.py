"""Dispatch: every RM action and every scheduled callback runs here, on the
timed dispatcher, for the RM it acts for.

A task knows its owner: the RM whose bound method it calls, or the RM whose
own task scheduled it. An exception in a task is that owner's failure (the
``on_raise`` hook decides what it means); leftover polling of an RM that
FAILED or is being released is dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from datetime import datetime
from typing import Any, Callable

from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.execution.ledger import RunLedger
from nepi_prefect.execution.recording import ActionRun
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.scheduler import Task, TaskStatus, TimedDispatcher
from nepi_prefect.execution.states import ActionKind, ResourceState, ResourceState2str
from nepi_prefect.util.timefuncs import stabsformat, tnow

# The members as module globals: an enum member read off its class costs ten
# times more (Python 3.11), and these are read on every state change.
NEW, DISCOVERED, PROVISIONED, READY, STARTED, STOPPED, FINISHED, FAILED, RELEASED = ResourceState
#: the states from which an action may run
_RUNS_FROM = {ActionKind.START: (READY, STOPPED), ActionKind.STOP: (STARTED,)}
_GONE = (FAILED, RELEASED)
_RELEASE = ActionKind.RELEASE

#: ``on_raise(rm, traceback_text)``: an action or task of ``rm`` raised
RaiseHook = Callable[[ResourceManager, str], None]


class Dispatch:
    """Runs callbacks and RM actions at their time, on ``nthreads`` workers."""

    def __init__(self, ledger: RunLedger, on_raise: RaiseHook, redact: Callable[[str], str],
                 nthreads: int, name: str, logger: logging.Logger):
        self._ledger = ledger
        self._on_raise = on_raise
        self._redact = redact
        self._logger = logger
        self._local = threading.local()
        self._tracked: dict[int, Task] = {}
        self._dispatcher = TimedDispatcher(self._run_task, nthreads=nthreads, name=name)

    # -- callbacks ---------------------------------------------------------------
    def schedule(self, date: Any, callback: Callable[[], Any], track: bool = False) -> int:
        """Run ``callback`` at ``date`` (relative like "1.5s" or absolute); its task id."""
        if not callable(callback):
            raise InvalidInputError(f"schedule() needs a callable, got {callback!r}")
        try:
            when = stabsformat(date)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        task = self.call_at(callback, when)
        if track:
            self._tracked[task.id] = task
        return task.id

    def get_task(self, tid: int) -> Task | None:
        return self._tracked.get(tid)

    def call_at(self, callback: Callable[[], Any], when: datetime,
                owner: ResourceManager | None = None, action: str | None = None) -> Task:
        """Schedule ``callback`` at ``when`` for ``owner`` (default: found from the callback)."""
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

    # -- actions -----------------------------------------------------------------
    def action_at(self, rm: ResourceManager, kind: ActionKind, run: ActionRun,
                  when: datetime) -> None:
        """Run ``kind`` of ``rm`` (recorded as ``run``) at ``when``."""
        if (when - tnow()).total_seconds() > 0.001:
            self._ledger.scheduled(run, when)
        self.call_at(functools.partial(self.execute, rm, kind, run), when, owner=rm, action=kind)

    def execute(self, rm: ResourceManager, kind: ActionKind, run: ActionRun) -> Any:
        """Run ``kind`` of ``rm`` now, unless ``rm`` is past it (``run`` then closes)."""
        if run.state.is_final:
            return None
        state = rm.recorded_state
        allowed = _RUNS_FROM.get(kind)
        if allowed is not None and state not in allowed:
            self._ledger.settle(run, state, f"{ResourceState2str[state]} before {kind}")
            return None
        self._ledger.running(run)
        return getattr(rm, kind)()

    def act_now(self, rm: ResourceManager, kind: ActionKind, run: ActionRun) -> Any:
        """Run ``kind`` of ``rm`` in this thread; an exception fails ``rm``, then propagates."""
        previous = getattr(self._local, "owner", None)
        self._local.owner = rm
        try:
            return self.execute(rm, kind, run)
        except Exception:
            self._on_raise(rm, traceback.format_exc())
            raise
        finally:
            self._local.owner = previous

    # -- the dispatcher's hook -----------------------------------------------------
    def _run_task(self, task: Task) -> None:
        owner = task.owner
        if owner is not None and task.action != _RELEASE and (
                owner.releasing or owner.recorded_state in _GONE):
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
                self._on_raise(owner, task.result)
            else:
                self._logger.error("scheduled task %s raised:\n%s", task.id,
                                   self._redact(task.result))
        finally:
            self._local.owner = None

    def stop(self) -> None:
        """Stop taking tasks; those running finish on their own."""
        self._dispatcher.stop()

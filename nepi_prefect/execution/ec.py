"""The experiment controller (EC): the user's handle on one experiment run, NEPI's API.

The EC registers resource managers, their attributes, connections and
conditions, deploys them, and drives each through NEW → DISCOVERED →
PROVISIONED → READY → STARTED → STOPPED/FINISHED (or FAILED) → RELEASED.
This module is the façade: it checks what the user gives and delegates to
dispatch, coordination, the ledger, failures, release, waits and report
(``docs/architecture.md`` draws who does what).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

from nepi_prefect import settings
from nepi_prefect.execution import attach as attaching
from nepi_prefect.execution import checks, exitguard, persistence, report, runstate
from nepi_prefect.execution.attribute import Flags
from nepi_prefect.execution.conditions import Condition, checked_condition
from nepi_prefect.execution.coordination import Coordinator
from nepi_prefect.execution.dispatch import Dispatch
from nepi_prefect.execution.environment import record_environment
from nepi_prefect.execution.errors import ExperimentStateError, InvalidInputError, listing
from nepi_prefect.execution.failures import ExperimentStatus, FailurePolicy
from nepi_prefect.execution.ledger import RunLedger
from nepi_prefect.execution.logs import LogRouter
from nepi_prefect.execution.recording import ActionRun, Recorder, default_recorder
from nepi_prefect.execution.release import Releaser
from nepi_prefect.execution.registry import ResourceRegistry
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.scheduler import Task
from nepi_prefect.execution.states import (
    ActionKind,
    ECState,
    ECState2str,
    ResourceAction,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.execution.waits import Waiters, ending_guids
from nepi_prefect.util.timefuncs import tsformat

__all__ = ["ExperimentController", "ECState", "ECState2str", "close_abandoned"]

S = ResourceState
K = ActionKind
close_abandoned = exitguard.close_abandoned
_close_abandoned = close_abandoned  # the name callers used before it was public


class ExperimentController:
    """Describe, deploy and run one experiment; NEPI's API.

    :param exp_id: names the experiment; runs of the same experiment share it
        (default: ``exp-`` and 16 random hex digits)
    :param local_dir: where results of runs are stored (default
        ``$NEPI_PREFECT_RESULTS`` or ``~/.nepi-prefect/experiments``)
    :param nthreads: dispatcher workers (default ``$NEPI_NTHREADS`` or 50)
    :param recorder: where the run is recorded (default: the recorder named by
        ``$NEPI_PREFECT_RECORDER``, the Prefect bridge unless it says ``none``)
    :param release_timeout: seconds ``release()`` waits for RMs before giving up
    """

    def __init__(self, exp_id: str | None = None, local_dir: str | None = None,
                 nthreads: int | None = None, recorder: Recorder | None = None,
                 release_timeout: float = 600.0, run_id: str | None = None,
                 *, _reopen: bool = False):
        self._exp_id = (f"exp-{os.urandom(8).hex()}" if exp_id is None
                        else checks.safe_identifier("exp_id", exp_id))
        self._run_id = tsformat() if run_id is None else checks.safe_identifier("run_id", run_id)
        self._local_dir = settings.results_root(local_dir)
        self._resources = ResourceRegistry()
        self._end_guids: list[int] | None = None
        self._lost: list[str] = []  # results the engine could not write (summary.json)
        self._manifest: dict[str, Any] | None = None  # the environment, gathered at shutdown
        self._closed = False
        self._logger = logging.getLogger("ExperimentController")
        self._recorder = recorder if recorder is not None else default_recorder()
        self._status = ExperimentStatus()
        self._ledger = RunLedger(self._recorder)
        self._logs = LogRouter(self._ledger, self._logger)
        self._failures = FailurePolicy(self._status, self._aborted, self._logs.redact)
        self._dispatch = Dispatch(self._ledger, self._failures.rm_raised, self._logs.redact,
                                  nthreads=settings.nthreads(nthreads),
                                  name=f"nepi-{self._exp_id[:12]}", logger=self._logger)
        self._coordination = Coordinator(self._resources.get, self._ledger, self._dispatch,
                                         lambda: self._status.running, self._failures.fail_rm)
        self._waiters = Waiters(lambda: self.finished)
        self._release = Releaser(self._resources.get, self._resources.__contains__, self._ledger,
                                 self._dispatch, self._coordination, self._wait_released,
                                 self._logger, release_timeout)
        self._run_state = runstate.RunStateFile(self.run_dir, self._run_state_document,
                                                self._logger)
        # attach continues the record of the run it takes over (Recorder.reopen)
        (self._recorder.reopen if _reopen else self._recorder.open)(self)
        exitguard.guard(self)

    @classmethod
    def attach(cls, run_dir: str, recorder: Recorder | None = None,
               nthreads: int | None = None) -> "ExperimentController":
        """Take over the run in ``run_dir`` whose controller died (SIGKILL, a crash).

        Reads its ``run-state.json``, registers the same RMs, logs in to the hosts again
        and watches the applications still running (see :mod:`.attach`). Then, as with
        any run: ``wait_finished(...)`` to follow them to their end, and ``shutdown()``
        to collect their traces into ``run_dir``, release them (nothing is left on the
        hosts), write ``summary.json`` and close the run's record (the Prefect recorder
        closes the dead controller's flow run). Refused while that controller lives.
        """
        state = attaching.read_run_state(run_dir)
        run_dir = os.path.abspath(run_dir)
        local_dir = os.path.dirname(os.path.dirname(run_dir))
        ec = cls(exp_id=state["exp_id"], run_id=state["run_id"], local_dir=local_dir,
                 recorder=recorder, nthreads=nthreads, _reopen=True)
        if ec.run_dir != run_dir:
            raise InvalidInputError(f"{run_dir!r} is not <results>/{state['exp_id']}/"
                                    f"{state['run_id']}; attach the run directory itself")
        rms = attaching.rebuild(ec, state)
        attaching.collect_traces(ec, rms)
        ec._run_state.changed()
        return ec

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
    def ecstate(self) -> ECState:
        return self._status.state

    @property
    def finished(self) -> bool:
        """True once the EC is FAILED or TERMINATED."""
        return self._status.state in (ECState.FAILED, ECState.TERMINATED)

    @property
    def failure(self) -> str | None:
        """Why the experiment failed, or None if it did not (kept after shutdown)."""
        return self._status.failure

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    # -- resources ----------------------------------------------------------
    @property
    def resources(self) -> list[int]:
        return self._resources.guids()

    def get_resource(self, guid: int) -> ResourceManager:
        return self._resources.get(guid)

    def register_resource(self, rtype: str, guid: int | None = None,
                          name: str | None = None) -> int:
        """Create an RM of ``rtype``; returns its guid.

        ``name`` is its human name in the record and the summary (unique; default
        ``<rtype>-<guid>``).
        """
        self._require_open("register a resource")
        return self._resources.create(self, rtype, guid, name)

    def get_name(self, guid: int) -> str:
        """The human name of RM ``guid`` (given at registration, else ``<rtype>-<guid>``)."""
        return self._resources.get(guid).name

    def get_guid(self, name: str) -> int:
        """The guid of the RM called ``name``."""
        return self._resources.guid_of(name)

    def get_attributes(self, guid: int) -> list:
        return self.get_resource(guid).get_attributes()

    def get(self, guid: int, name: str) -> Any:
        return self.get_resource(guid).get(name)

    def set(self, guid: int, name: str, value: Any) -> Any:
        """Set an attribute (validated now; Design attributes only before deploy)."""
        self._require_open("set an attribute")
        rm = self.get_resource(guid)
        if rm.get_attribute(name).has_flag(Flags.NoWrite):
            raise InvalidInputError(f"{rm.get_rtype()} {guid}: {name!r} is read-only")
        return checks.set_checked(rm, name, value)

    def register_connection(self, guid1: int, guid2: int) -> None:
        """Connect two RMs (order does not matter); both types must accept it."""
        self._require_open("register a connection")
        rm1, rm2 = self.get_resource(guid1), self.get_resource(guid2)
        checks.refuse_connection(rm1, rm2)
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
    def _condition(self, action: int, guids2, state: int, time: Any) -> Condition:
        group = [rm.guid for rm in self._resources.many(guids2)]
        return checked_condition(action, group, state, time)

    def register_condition(self, guids1, action: int, guids2, state: int,
                           time: str | None = None) -> None:
        """``action`` (START or STOP) of every RM in ``guids1`` waits until every
        RM in ``guids2`` reached ``state``, plus ``time`` counted from when each did."""
        self._require_open("register a condition")
        cond = self._condition(action, guids2, state, time)
        rms = self._resources.many(guids1)
        checks.refuse_new_cycle(self._resources, rms, action, cond)
        for rm in rms:
            rm.add_condition(action, cond)

    def set_with_conditions(self, name: str, value: Any, guids1, guids2, state: int,
                            time: str | None = None) -> None:
        """Set ``name`` to ``value`` on ``guids1`` once they are STARTED and every RM
        in ``guids2`` reached ``state`` (plus ``time``)."""
        self._require_open("set with conditions")
        cond = self._condition(ResourceAction.START, guids2, state, time)
        for rm in self._resources.many(guids1):
            value = rm.get_attribute(name).validate(value)
            self._coordination.plan_set(rm, name, value, cond)

    # -- traces ---------------------------------------------------------------
    def enable_trace(self, guid: int, name: str) -> None:
        self._require_open("enable a trace")
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
        return self._act_now(rm, K.START)

    def stop(self, guid: int) -> Any:
        """Stop an RM now, in this thread; nothing to do unless it is STARTED."""
        rm = self.get_resource(guid)
        if rm.state != S.STARTED:
            rm.debug(f"stop ignored in state {ResourceState2str[rm.state]}")
            return None
        return self._act_now(rm, K.STOP)

    def _act_now(self, rm: ResourceManager, kind: ActionKind) -> Any:
        run = self._coordination.take(rm, kind) or self._ledger.open(kind, rm)
        return self._dispatch.act_now(rm, kind, run)

    def start_with_conditions(self, guid: int) -> None:
        """Start the RM once it is READY and its START conditions hold."""
        self._coordination.plan(self.get_resource(guid), K.START)

    def stop_with_conditions(self, guid: int) -> None:
        """Stop the RM once it is STARTED and its STOP conditions hold."""
        self._coordination.plan(self.get_resource(guid), K.STOP)

    # -- deployment ---------------------------------------------------------------
    def deploy(self, guids=None, wait_all_ready: bool = True, group: int | None = None) -> None:
        """Deploy RMs (default: every RM still NEW) as one group, and start them.

        With ``wait_all_ready`` the starts of the group wait until every member
        is READY. Deploying into an existing ``group`` joins it; members already
        started are not started again.
        """
        self._status.require_running("deploy")
        group = checks.group_id(group)
        if checks.guid_list(guids, "deploy guids"):
            rms = [rm for rm in self._resources.many(guids) if rm.deployment_group is None]
        else:
            rms = [rm for rm in self._resources
                   if rm.state == S.NEW and rm.deployment_group is None]
        checks.refuse_cycle(checks.conditions_of(self._resources), "deploy")
        checks.refuse_missing_required(rms)
        if rms:
            self._coordination.deploy(rms, wait_all_ready, group)
            self._run_state.changed()

    def _require_open(self, what: str) -> None:
        if self._closed:
            raise ExperimentStateError(f"cannot {what}: experiment {self._exp_id} is shut down; "
                                       f"create a new ExperimentController")

    # -- dispatching -----------------------------------------------------------------
    def schedule(self, date: Any, callback: Callable[[], Any], track: bool = False) -> int:
        """Run ``callback`` at ``date`` ("0s", "1.5s", "100ms", ... or an absolute date)
        on the dispatcher; returns a task id (retrievable with ``get_task`` if ``track``)."""
        return self._dispatch.schedule(date, callback, track)

    def get_task(self, tid: int) -> Task | None:
        return self._dispatch.get_task(tid)

    # -- what RMs tell the EC --------------------------------------------------------
    def on_state_changed(self, rm: ResourceManager) -> None:
        """Called by an RM each time its state changes (``set_state`` does it)."""
        state = rm.recorded_state
        self._ledger.state_changed(rm, state)
        if state == S.FAILED:
            self._failures.rm_failed(rm)
        self._coordination.watchers.state_changed(rm)
        self._waiters.notify()
        self._run_state.changed()

    def register_secret(self, value: Any) -> None:
        """Mask ``value`` in every log line of this experiment (a password, a key).

        Credential attributes register theirs when set; an RM that obtains a
        secret otherwise (saved credentials, say) registers it here.
        """
        self._logs.register_secret(value)

    def redact(self, text: str) -> str:
        """``text`` with every secret of this experiment masked."""
        return self._logs.redact(text)

    def log_for(self, rm: ResourceManager | None, level: int, text: str) -> None:
        """Log ``text`` for ``rm`` (None: the EC), secrets masked, to the recorder too."""
        self._logs.log_for(rm, level, text)

    def current_run(self, rm: ResourceManager) -> ActionRun | None:
        """The action run an RM is working on now (for log routing)."""
        return self._ledger.current(rm.guid)

    # -- failures ------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Fail the experiment now (e.g. a timeout ran out): pending actions are
        cancelled, every RM is released, and every wait returns."""
        self._failures.abort(reason)

    def _aborted(self, reason: str) -> None:
        self._logger.error("experiment %s failed: %s; releasing every resource", self._exp_id, reason)
        self._recorder.log(None, logging.ERROR, f"experiment failed: {reason}")
        self._coordination.cancel_all(reason)
        self._waiters.notify()
        self._release.release_async(self._resources.guids())

    # -- waiting ------------------------------------------------------------------------
    def wait(self, guids, states: Iterable[int] = (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED),
             timeout: float | None = None) -> bool:
        """Block until every RM in ``guids`` is in one of ``states``, or the EC is
        FAILED or TERMINATED. Returns False only if ``timeout`` passed first."""
        return self._waiters.wait(self._resources.many(guids), states, timeout, stop_when_finished=True)

    def _wait_released(self, guids: list[int], timeout: float) -> bool:
        return self._waiters.wait(self._resources.many(guids), (S.RELEASED,), timeout,
                                  stop_when_finished=False)

    def wait_started(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.STARTED, S.STOPPED, S.FINISHED, S.FAILED, S.RELEASED), timeout)

    def wait_finished(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED), timeout)

    def wait_released(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.RELEASED,), timeout)

    def wait_deployed(self, guids, timeout: float | None = None) -> bool:
        return self.wait(guids, (S.READY, S.STARTED, S.STOPPED, S.FINISHED, S.FAILED, S.RELEASED), timeout)

    def end_guids(self) -> list[int]:
        """The guids whose end ends the run: those given to :meth:`set_end_guids`
        (a description's ``wait_for``), else every RM whose type finishes by itself."""
        if self._end_guids is not None:
            return list(self._end_guids)
        return ending_guids(self._resources)

    def set_end_guids(self, guids: Iterable[int] | None) -> None:
        """Name the RMs whose end ends the run (None: back to the default)."""
        self._end_guids = None if guids is None else [rm.guid for rm in self._resources.many(guids)]

    # -- release and shutdown -----------------------------------------------------------
    def release(self, guids=None) -> None:
        """Release the RMs (default: all) and wait until they are RELEASED."""
        rms = self._resources.many(guids) if guids not in (None, []) else list(self._resources)
        self._release.release(rms)

    def shutdown(self) -> None:
        """Release every RM, mark the EC TERMINATED and stop the dispatcher."""
        if self._closed:
            return
        self._closed = True
        try:
            self.release()
        finally:
            self._status.terminate()
            self._waiters.notify()
            self._dispatch.stop()
            self._run_state.close()
            self._manifest = record_environment(self)
            summary = self.summary()
            lost = report.write_summary(self.run_dir, summary, self._logger)
            if lost:
                self._lost.append(lost)
                summary = self.summary()
            self._recorder.close(self, summary)
            exitguard.forget(self)

    def abandon(self, reason: str) -> None:
        """The process exits without shutdown(): release what we can (30 s at
        most), close the record, shut down."""
        if self._closed:
            return
        self._logger.warning("experiment %s: %s; releasing its resources", self._exp_id, reason)
        self._release.timeout = min(self._release.timeout, 30.0)
        self._recorder.abandon(self, reason)
        # not COMPLETED: summary.json says the run was cut short, and why
        self._status.fail(f"abandoned: {reason}")
        self.shutdown()

    def _run_state_document(self) -> dict[str, Any]:
        return runstate.run_state(self._exp_id, self._run_id, self.run_dir,
                                  ECState2str[self._status.state], self._resources)

    # -- summary -------------------------------------------------------------------------
    outcome = staticmethod(report.outcome)

    def summary(self) -> dict[str, Any]:
        """What happened, RM by RM: rtype, guid, outcome, transition times, traces; after
        shutdown also the environment manifest."""
        summary = report.summary(self._exp_id, self._run_id, self.run_dir, self._status.failure,
                                 self._resources, self._lost)
        if self._manifest is not None:  # known once shut down
            summary["manifest"] = self._manifest
        return summary

    # -- persistence (the description format is registered by nepi_prefect.spec) ---------
    def save(self, path: str) -> str:
        """Write this experiment's description (YAML or JSON by extension).

        The format is lent by ``nepi_prefect.spec``, registered when it is imported.
        """
        return persistence.serializer().save(self, path)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "ExperimentController":
        """A new EC holding the experiment described in ``path`` (needs ``nepi_prefect.spec``)."""
        return persistence.serializer().load(path, **kwargs)

"""The Prefect bridge: an experiment run is a flow run, an RM action a task run.

``PrefectRecorder`` is the engine's default :class:`Recorder`. Its methods are
called from the EC and its dispatcher threads; they only snapshot what they are
told and queue it. Background threads (:mod:`.pipeline`) journal it durably and
ship it to the Prefect API while the experiment runs. :meth:`PrefectRecorder.close`
waits until the record is journaled, then at most ``timeout`` seconds for the
server to accept the rest; what it has not accepted by then stays in the journal
and is shipped by the next nepi-prefect process or ``nepi-prefect server flush``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from nepi_prefect import settings
from nepi_prefect.execution.recording import ActionRun, Recorder, ResourceChange
from nepi_prefect.orchestration import local_server
from nepi_prefect.orchestration import logins  # noqa: F401  (lends the saved-login loaders)
from nepi_prefect.orchestration import reattach
from nepi_prefect.orchestration.artifacts import closing_artifacts, failure_lines
from nepi_prefect.orchestration.cancel import CancelWatch
from nepi_prefect.orchestration.delivery import BATCH, WINDOW, Delivery, Target
from nepi_prefect.orchestration.events import Snapshot, metric_events, resource_event, utc
from nepi_prefect.orchestration.journal import Journal
from nepi_prefect.orchestration.pipeline import Outcome, Pipeline
from nepi_prefect.orchestration.story import story

if TYPE_CHECKING:
    from nepi_prefect.execution.ec import ExperimentController

log = logging.getLogger("nepi_prefect.orchestration")

ATTACH_MODES = ("auto", "current", "subflow", "new")
ABANDON_TIMEOUT = 10.0
NOTIFY_AFTER = 1.0     # seconds of waiting in close() before saying what for
#: states inside a deploy, neither announced nor logged (READY says it is deployed;
#: two events and two log lines less per RM for the server to ingest)
DEPLOY_STEPS = ("DISCOVERED", "PROVISIONED")
#: seconds close() may wait while the local server it needs is still starting
SERVER_START_WAIT = 30.0


class PrefectRecorder(Recorder):
    """Record one experiment run (one EC) as one Prefect flow run.

    :param attach: "auto" (a subflow run inside a user's ``@flow``, else a new
        flow run), "current" (task runs go into the current flow run, which
        keeps control of its final state), "subflow" (require a current flow)
        or "new" (always a top-level flow run)
    :param timeout: seconds :meth:`close` waits for the server to accept the
        record (default ``$NEPI_PREFECT_RECORD_TIMEOUT`` or 2)
    :param notify: called with a sentence when :meth:`close` has waited a second
        (default: an INFO log line)
    :param background: :meth:`close` returns once the record is journaled and its
        flow run opened (at most ``timeout``); the rest goes out while this process
        lives on, and :func:`finish_background` waits for it (campaigns: the next run
        starts at once, and one line at the end says what is not on the server yet)
    :param name: the flow run's name (default ``<exp_id>-<run_id>``; a campaign names
        each run after its experiment and parameters, e.g. ``ping-interval=0.2-r1``)
    :param tags: more tags for the flow run and its task runs (besides the experiment
        id and ``nepi-prefect``; a campaign adds ``campaign:<name>``)
    """

    def __init__(self, attach: str = "auto", timeout: float | None = None,
                 notify: Callable[[str], None] | None = None, background: bool = False,
                 name: str | None = None, tags: list[str] | None = None):
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach must be one of {ATTACH_MODES}, got {attach!r}")
        self.attach = attach
        self.timeout = settings.record_timeout(timeout)
        self.notify = notify or (lambda text: log.info("%s", text))
        self.background = background
        self.name = name
        self.tags = list(tags or [])
        self._ids = ("", "")              # (exp_id, run_id) of the run recorded
        self._events = settings.resource_events()
        self._pipeline: Pipeline | None = None
        self._abandoned: tuple[str, str] | None = None   # (final type, message)
        self._cancelled: str | None = None   # why, if its flow run was cancelled in Prefect
        self._watch: CancelWatch | None = None
        self._closed = False
        self._redact = _same

    # -- the Recorder interface ----------------------------------------------------------
    def open(self, ec: "ExperimentController") -> None:
        self._redact = ec.redact
        self._ids = (ec.exp_id, ec.run_id)
        target = self._target(ec)
        header = {**target.header(), "pid": os.getpid(), "host": socket.gethostname()}
        try:
            journal = Journal.create(uuid.uuid4().hex, header)
        except OSError as exc:
            raise RuntimeError(
                f"cannot write the Prefect record's journal in {settings.journal_dir()}: {exc}; "
                f"set {settings.JOURNAL_ENV} to a writable directory, or "
                f"{settings.RECORDER_ENV}=none to run without a record") from None
        self._start(ec, Delivery(journal, target), target)

    def reopen(self, ec: "ExperimentController") -> None:
        """``ec`` took over a run whose controller died (attach): continue that run's
        record (its orphaned journal, or its flow run on the server), else open one."""
        self._redact = ec.redact
        self._ids = (ec.exp_id, ec.run_id)
        delivery = reattach.continued(ec.exp_id, ec.run_id, self._target(ec))
        if delivery is None:
            self.open(ec)
        else:
            self._start(ec, delivery, delivery.target)

    def _start(self, ec: "ExperimentController", delivery: Delivery, target: Target) -> None:
        self._pipeline = pipeline = Pipeline(delivery, target.tags)
        pipeline.start()
        if target.attach != "current":   # Prefect's engine owns (and cancels) a current run
            self._watch = CancelWatch(lambda: (pipeline.delivery.api, pipeline.outcome.flow_run_id),
                                      lambda why: self._cancel(ec, why))
            self._watch.start()

    def _cancel(self, ec: "ExperimentController", why: str) -> None:
        """The flow run was cancelled in Prefect: abort the experiment, end Cancelled."""
        self._cancelled = "cancelled in Prefect" + (f" ({why})" if why else "")
        log.warning("experiment %s: its flow run was %s; releasing every resource",
                    ec.exp_id, self._cancelled)
        ec.abort(self._cancelled)

    def action_changed(self, run: ActionRun) -> None:
        # Called from dispatcher threads: snapshot (the engine mutates the run) and queue.
        if self._pipeline is not None:
            snap = Snapshot.of(run)
            if snap.message:  # rare: failures; keep secrets out of state messages
                snap = dataclasses.replace(snap, message=self._redact(snap.message))
            self._pipeline.queue.put(("run", snap))

    def log(self, run: ActionRun | None, level: int, message: str) -> None:
        if self._pipeline is not None:
            logger = f"nepi.{run.rtype}" if run is not None else "nepi.ec"
            self._pipeline.queue.put(("log", run.id if run is not None else None, logger,
                                      level, message, datetime.now(timezone.utc)))

    def resource_changed(self, change: ResourceChange) -> None:
        # Called from dispatcher threads: build and queue (the journal thread writes).
        pipeline = self._pipeline
        if pipeline is None or change.state in DEPLOY_STEPS:
            return
        if change.failure:
            change = dataclasses.replace(change, failure=self._redact(change.failure))
        if self._events == "all" or self._events == "failures" and change.state == "FAILED":
            pipeline.queue.put(("event", resource_event(change, *self._ids)))
        if self._events != "none" and change.state == "RELEASED":
            for event in metric_events(change, *self._ids):
                pipeline.queue.put(("event", event))
        at = utc(change.at)   # when it happened, not when it was queued
        for level, text in story(change, self._redact):
            pipeline.queue.put(("log", change.run_id, f"nepi.{change.rtype}", level, text, at))

    def abandon(self, ec: "ExperimentController", reason: str) -> None:
        self.timeout = min(self.timeout, ABANDON_TIMEOUT)  # the process is on its way out
        if _interrupted():
            self._abandoned = ("CANCELLED", f"interrupted (Ctrl-C): {reason}")
        else:
            self._abandoned = ("CRASHED", reason)

    def close(self, ec: "ExperimentController", summary: dict[str, Any]) -> None:
        if self._pipeline is None or self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.stop()
        final_type, message = self._final(summary)
        closing = {"type": final_type, "name": final_type.capitalize(),
                   "message": self._redact(message),
                   "at": datetime.now(timezone.utc).isoformat(),
                   "artifacts": closing_artifacts(summary, redact=self._redact)}
        pipeline = self._pipeline
        pipeline.queue.put(("close", closing))
        pipeline.wake()
        if self.background:
            self._wait_for_flow_run(pipeline)
            with _BACKGROUND_LOCK:
                _BACKGROUND.append(pipeline)
            return
        self._wait(pipeline)
        self._report(summary)

    def _wait_for_flow_run(self, pipeline: Pipeline) -> None:
        """Until the record is journaled and its flow run opened (or ``timeout``)."""
        pipeline.journaled.wait(60)
        deadline = time.monotonic() + self.timeout
        while pipeline.outcome.flow_run_id is None and not pipeline.done.is_set() \
                and time.monotonic() < deadline:
            pipeline.done.wait(0.05)

    def _wait(self, pipeline: Pipeline) -> None:
        """Until the server accepted the record, or it is safe in the journal and the
        server is not taking it (unreachable, or ``timeout`` ran out)."""
        started = time.monotonic()
        told = False
        limit = self.timeout
        pipeline.journaled.wait(60)
        backlog = _Backlog(pipeline)
        waited_for_start = False
        while not pipeline.done.wait(0.05):
            waited = time.monotonic() - started
            if _local_server_starting(pipeline, waited_for_start):
                waited_for_start = True
                # A first run on a fresh PREFECT_HOME: the server it started is coming up.
                # Worth waiting for (once), rather than leaving the record to the background.
                limit = max(limit, min(waited + self.timeout, SERVER_START_WAIT))
            elif backlog.hopeless(limit - waited):
                break   # it cannot all go in time: no use making the user wait for part of it
            if waited >= limit or pipeline.failed_after_close.is_set():
                break
            if not told and waited >= NOTIFY_AFTER:
                told = True
                self.notify(f"waiting for {pipeline.waiting_for()} (the record is safe in "
                            f"{pipeline.outcome.journal})")
        pipeline.stop.set()
        pipeline.wake()

    # -- what the record achieved ----------------------------------------------------------
    @property
    def outcome(self) -> Outcome | None:
        """The flow run id, API URL, whether the record was delivered, the journal."""
        return self._pipeline.outcome if self._pipeline is not None else None

    @property
    def flow_run_id(self) -> Any:
        return self._pipeline.outcome.flow_run_id if self._pipeline is not None else None

    @property
    def delivered(self) -> bool:
        """The run's record (task runs, logs, artifacts, final state) is on the server
        (False before close); the resource feed may still follow from the journal."""
        return self._pipeline is not None and self._pipeline.outcome.delivered

    # -- helpers ---------------------------------------------------------------------------------
    def _target(self, ec: "ExperimentController") -> Target:
        name = self.name or f"{ec.exp_id}-{ec.run_id}"
        target = Target(attach="new", flow_run_name=name, tags=[ec.exp_id, "nepi-prefect", *self.tags],
                        parameters={"exp_id": ec.exp_id, "run_id": ec.run_id},
                        started=datetime.now(timezone.utc).isoformat())
        # Importing Prefect takes seconds on a busy machine: don't, unless the user
        # already did (then there may be a flow run context, or settings, to honour).
        if "prefect.context" not in sys.modules:
            if self.attach in ("current", "subflow"):
                raise RuntimeError(f"attach={self.attach!r} needs a running Prefect flow")
            return target
        from prefect.context import FlowRunContext
        from prefect.settings import get_current_settings

        prefect_settings = get_current_settings()
        target.api_url = prefect_settings.api.url
        key, auth = prefect_settings.api.key, prefect_settings.api.auth_string
        target.api_key = key.get_secret_value() if key else None
        target.auth_string = auth.get_secret_value() if auth else None
        flow_run = getattr(FlowRunContext.get(), "flow_run", None)
        if flow_run is None or target.api_url is None:
            # Without an API URL, the user's flow ran on Prefect's own ephemeral API,
            # which the record cannot reach: it becomes a top-level flow run instead.
            if self.attach in ("current", "subflow"):
                raise RuntimeError(f"attach={self.attach!r} needs a running Prefect flow "
                                   f"and PREFECT_API_URL")
            return target
        if self.attach in ("auto", "subflow", "current"):
            target.attach = "current" if self.attach == "current" else "subflow"
            target.parent_flow_run_id = str(flow_run.id)
            target.parent_flow_id = str(flow_run.flow_id)
        return target

    def _final(self, summary: dict[str, Any]) -> tuple[str, str]:
        """The flow run's final state and message: a failure names the failed resources
        (by their names) and their reasons; lost results (INCOMPLETE) fail it too."""
        if self._abandoned is not None:
            return self._abandoned
        if self._cancelled is not None:
            return "CANCELLED", self._cancelled
        state = summary.get("state")
        if state == "FAILED":
            why = "; ".join(failure_lines(summary)) or "unknown reason"
            return "FAILED", f"experiment failed: {why}"
        if state == "INCOMPLETE":  # it ran, but results were lost
            return "FAILED", f"results lost: {'; '.join(summary.get('lost') or []) or 'see summary'}"
        if state not in (None, "COMPLETED"):
            return "FAILED", f"experiment ended {state}: {summary.get('failure') or 'see summary'}"
        return "COMPLETED", f"{len(summary.get('resources', []))} resources"

    def _report(self, summary: dict[str, Any]) -> None:
        outcome = self._pipeline.outcome
        if not outcome.delivered:
            last = outcome.errors[-1] if outcome.errors else "the server did not take it in time"
            log.warning("the Prefect record of experiment %s is not on the server yet (%s); "
                        "it is kept in %s and goes out in the background (the local server's "
                        "service, the next nepi-prefect run or `nepi-prefect server flush`)",
                        summary.get("exp_id"), last, outcome.journal)


class _Backlog:
    """How fast the server takes what is left of a closed record."""

    JUDGE_AFTER = 0.5   # seconds of shipping before the rate means anything
    #: events a second: more than any server was seen to take (about 300 on a 2-core
    #: machine, see docs/prefect.md), so a backlog beyond it is hopeless without a look
    BEST_RATE = 2000.0

    def __init__(self, pipeline: Pipeline):
        self.delivery = pipeline.delivery

    def hopeless(self, remaining: float) -> bool:
        """What is pending will not be accepted in ``remaining`` s: not even by the
        fastest server (then there is no need to see the rate: a run followed by another
        one's record may not even have reached the API yet), or not at the rate the
        server has taken this record so far."""
        delivery = self.delivery
        pending = delivery.run_pending   # the feed never holds the exit (see Pipeline)
        # a batch or two says nothing about the rate: only a long backlog is judged
        if pending <= 2 * BATCH:
            return False
        if pending > WINDOW + self.BEST_RATE * max(remaining, 0.0):
            return True
        if delivery.api is None or delivery.shipping_since is None:
            return False
        elapsed = time.monotonic() - delivery.shipping_since
        if elapsed < self.JUDGE_AFTER:
            return False
        rate = delivery.accepted / elapsed
        return rate <= 0 or pending / rate > remaining


def _local_server_starting(pipeline: Pipeline, waited_for_it: bool) -> bool:
    """The record waits for the local server, whose process lives but does not answer
    yet; or, when this close found it so (``waited_for_it``), answers but has not
    opened the run's flow run yet: a server that has just come up is busy starting
    (eight first runs at once on a fresh home: two of them gave up within a second
    of their record going in, and exited 3)."""
    delivery = pipeline.delivery
    if delivery.target.api_url is not None or local_server.running() is None:
        return False
    return delivery.api is None or waited_for_it and delivery.flow_run_id is None


#: records closed in the background, still going to the server
_BACKGROUND: list[Pipeline] = []
_BACKGROUND_LOCK = threading.Lock()


def finish_background(timeout: float) -> list[str]:
    """Wait at most ``timeout`` seconds for the records closed with ``background=True``;
    returns the journals of those the server has not taken (they go out later: the
    local server's service, the next nepi-prefect run or ``nepi-prefect server flush``)."""
    deadline = time.monotonic() + timeout
    with _BACKGROUND_LOCK:
        pipelines, _BACKGROUND[:] = list(_BACKGROUND), []
    for pipeline in pipelines:
        pipeline.done.wait(max(0.0, deadline - time.monotonic()))
    left = []
    for pipeline in pipelines:
        if not pipeline.done.is_set():
            pipeline.stop.set()   # the sender lets the journal go, to be shipped later
            pipeline.wake()
        if not pipeline.outcome.delivered:
            left.append(pipeline.outcome.journal)
    return left


def _interrupted() -> bool:
    """True when the interpreter is exiting because of an unhandled Ctrl-C."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _same(text: str) -> str:
    return text

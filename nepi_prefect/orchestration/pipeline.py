"""The recorder's background thread: everything that talks to the Prefect API.

The engine's dispatcher threads only put snapshots on a queue. This thread
connects (starting the ephemeral API if needed), opens the flow run, ships
task-run events and log lines in batches, and at close writes the artifact,
confirms the record by reading it back, and sets the flow run's final state.
A slow or unreachable API delays this thread, never the experiment.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from nepi_prefect.execution.recording import RunState
from nepi_prefect.orchestration import server
from nepi_prefect.orchestration.events import Snapshot, TaskRunEvents, log_record

log = logging.getLogger("nepi_prefect.orchestration")

FLOW_NAME = "nepi-experiment"
WINDOW = 4000          # task-run events in flight before we wait for the server
LOADED = 200           # snapshots in one batch beyond which superseded states are folded
BATCH = 500            # events or log records per request
LINGER = 0.05          # seconds to let a batch fill before shipping it
RETRY_MAX = 5.0        # seconds between attempts while the API is unreachable


@dataclass
class Target:
    """Where the record goes: settings and run context captured in the user's thread."""

    attach: str                          # "auto" | "current" | "subflow" | "new"
    flow_run_name: str
    tags: list[str]
    parameters: dict[str, Any]
    api_url: str | None = None           # None: configured in the environment, or ephemeral
    api_key: str | None = None
    auth_string: str | None = None
    parent_flow_run_id: uuid.UUID | None = None   # for "subflow" and "current"
    parent_flow_id: uuid.UUID | None = None


@dataclass
class Closing:
    """The close request: the artifact to write and the flow run's final state."""

    artifact: dict[str, Any] | None
    final_type: str                      # COMPLETED | FAILED | CRASHED | CANCELLED
    final_message: str
    timeout: float


@dataclass
class Outcome:
    """What the thread achieved; read by ``PrefectRecorder.close``."""

    flow_run_id: uuid.UUID | None = None
    api_url: str | None = None
    confirmed: bool = False
    missing: int = 0
    errors: list[str] = field(default_factory=list)
    ship_seconds: float = 0.0            # time spent building and posting
    confirm_seconds: float = 0.0


class Shipper(threading.Thread):
    """Drains the recorder's queue into the Prefect API."""

    def __init__(self, target: Target):
        super().__init__(name="nepi-prefect-recorder", daemon=True)  # never blocks exit
        self.target = target
        self.queue: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self.done = threading.Event()
        self.outcome = Outcome()
        self.expected: dict[uuid.UUID, str] = {}      # task run id -> last state type
        self._events: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self._client: Any = None
        self._builder: TaskRunEvents | None = None
        self._deadline: float | None = None           # set once closing
        self._closing: Closing | None = None
        self._sent = 0                                # events posted
        self._acked = 0                               # events the server has (about) processed
        #: (events sent up to it, task run id, state timestamp) of each batch's last event
        self._checkpoints: collections.deque[tuple[int, uuid.UUID, datetime]] = collections.deque()

    # -- the thread -------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # never let the record kill anything else
            self.outcome.errors.append(f"recorder thread failed: {exc!r}")
            log.debug("recorder thread failed", exc_info=True)
            self._drain_forever_until_close()
        finally:
            self.done.set()
            if self._client is not None:
                self._client.__exit__(None, None, None)

    def _run(self) -> None:
        if not self._retrying("connect to the Prefect API", self._connect):
            return self._drain_forever_until_close()
        while self._closing is None:
            self._collect(block=True)
            if self._events or self._logs:
                self._ship()
        self._ship()
        self._finish()

    def _drain_forever_until_close(self) -> None:
        """Without an API, just consume the queue so close() can return."""
        while self._closing is None:
            self._take(self.queue.get())

    # -- queue ------------------------------------------------------------------------
    def _collect(self, block: bool) -> None:
        try:
            self._take(self.queue.get(timeout=0.5) if block else self.queue.get_nowait())
        except queue.Empty:
            return
        time.sleep(LINGER)   # under load, wait for a fuller batch: fewer, larger requests
        while self._closing is None and len(self._events) < BATCH and len(self._logs) < BATCH:
            try:
                self._take(self.queue.get_nowait())
            except queue.Empty:
                return

    def _take(self, item: tuple) -> None:
        kind = item[0]
        if kind == "run":
            snap: Snapshot = item[1]
            self.expected[snap.id] = snap.state.value
            self._events.append(snap)   # turned into an event when shipped
        elif kind == "log":
            _, run_id, logger, level, message, at = item
            self._logs.append((run_id, logger, level, message, at))
        elif kind == "close":
            self._closing = item[1]
            self._deadline = time.monotonic() + self._closing.timeout

    # -- connecting ---------------------------------------------------------------------
    def _connect(self) -> None:
        from prefect.client.orchestration import SyncPrefectClient

        tgt = self.target
        url = tgt.api_url or server.configured_api_url() or server.ephemeral_api_url()
        if self._client is None:
            self._client = SyncPrefectClient(url, api_key=tgt.api_key, auth_string=tgt.auth_string)
            self._client.__enter__()
        self.outcome.api_url = url
        flow_run_id, flow_id = self._open_flow_run()
        self.outcome.flow_run_id = flow_run_id
        self._builder = TaskRunEvents(flow_run_id, flow_id, tgt.tags)

    def _open_flow_run(self) -> tuple[uuid.UUID, uuid.UUID | None]:
        from prefect.states import Running

        tgt = self.target
        if tgt.attach == "current":
            return tgt.parent_flow_run_id, tgt.parent_flow_id
        parent_task_run_id = None
        if tgt.attach == "subflow":
            parent_task_run_id = self._parent_task_run()
        flow_run = self._client.create_flow_run(
            _flow(), name=tgt.flow_run_name, parameters=tgt.parameters, tags=tgt.tags,
            parent_task_run_id=parent_task_run_id, state=Running())
        return flow_run.id, flow_run.flow_id

    def _parent_task_run(self) -> uuid.UUID:
        """The task run in the user's flow run that stands for this subflow, as Prefect makes it."""
        from prefect.states import Pending

        task_run = self._client.create_task_run(
            _task(), flow_run_id=self.target.parent_flow_run_id, dynamic_key=uuid.uuid4().hex,
            name=self.target.flow_run_name, extra_tags=self.target.tags, state=Pending())
        return task_run.id

    # -- shipping -----------------------------------------------------------------------
    def _ship(self) -> None:
        started = time.perf_counter()
        events = [self._builder.event(snap) for snap in coalesce(self._events)]
        self._events = []
        while events:
            batch = events[:BATCH]
            self._wait_for_room(len(batch))
            if not self._retrying("send task-run events", self._post, "/events", batch):
                break
            self._sent += len(batch)
            last = batch[-1]["resource"]["prefect.resource.id"].rpartition(".")[2]
            self._checkpoints.append((self._sent, uuid.UUID(last),
                                      datetime.fromisoformat(batch[-1]["occurred"])))
            del events[:len(batch)]
        while self._logs:
            batch = [self._log_json(item) for item in self._logs[:BATCH]]
            if not self._retrying("send log lines", self._post, "/logs/", batch):
                self._logs = []
                break
            del self._logs[:len(batch)]
        self.outcome.ship_seconds += time.perf_counter() - started

    def _wait_for_room(self, n: int) -> None:
        """Back-pressure. The server queues events in memory (10000 per consumer) and drops
        the overflow, and its task-run recorder may write them one by one. Keep at most
        WINDOW events in flight; a batch's last event, seen on the server, acknowledges it."""
        delay = 0.05
        while self._sent + n - self._acked > WINDOW and self._checkpoints:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            try:
                self._acknowledge()
            except Exception:
                pass
            if self._sent + n - self._acked > WINDOW:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                self._collect(block=False)

    def _acknowledge(self) -> None:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        probe = list(self._checkpoints)[:20]
        runs = self._client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=[cp[1] for cp in probe])))
        stamps = {run.id: run.state.timestamp for run in runs if run.state is not None}
        while self._checkpoints:
            position, run_id, stamp = self._checkpoints[0]
            if run_id not in stamps or stamps[run_id] < stamp:
                return
            self._acked = position
            self._checkpoints.popleft()

    def _log_json(self, item: tuple) -> dict[str, Any]:
        run_id, logger, level, message, at = item
        return log_record(self.outcome.flow_run_id, run_id, logger, level, message, at)

    def _post(self, path: str, batch: list[dict[str, Any]]) -> None:
        response = self._client._client.post(
            path, content=orjson.dumps(batch), headers={"content-type": "application/json"})
        response.raise_for_status()

    def _retrying(self, what: str, call: Callable[..., Any], *args: Any) -> bool:
        """Call until it works; give up only once closing and past the deadline."""
        delay, first_failure = 0.2, None
        while True:
            try:
                call(*args)
                return True
            except Exception as exc:
                now = time.monotonic()
                first_failure = first_failure or now
                if self._deadline is not None and now >= self._deadline:
                    self.outcome.errors.append(f"could not {what}: {exc!r}")
                    return False
                if now - first_failure > 10 and delay >= RETRY_MAX:
                    log.debug("still trying to %s: %r", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self._collect(block=False)   # keep taking what the engine reports

    # -- closing ------------------------------------------------------------------------
    def _finish(self) -> None:
        closing = self._closing
        if closing.artifact is not None:
            self._retrying("write the summary artifact", self._artifact, closing.artifact)
        self._ship()  # the logs that came in meanwhile
        started = time.perf_counter()
        self.outcome.confirmed = self._confirm()
        self.outcome.confirm_seconds = time.perf_counter() - started
        if self.target.attach != "current":
            self._retrying("set the flow run's final state", self._final_state, closing)

    def _artifact(self, artifact: dict[str, Any]) -> None:
        # A plain POST: the client's create_artifact also emits an event through Prefect's
        # EventsWorker, a thread that cannot start at interpreter exit (abandoned runs).
        response = self._client._client.post(
            "/artifacts/", json={**artifact, "flow_run_id": str(self.outcome.flow_run_id)})
        response.raise_for_status()

    def _final_state(self, closing: Closing) -> None:
        from prefect.client.schemas.objects import State, StateType

        state = State(type=StateType(closing.final_type), message=closing.final_message or None)
        self._client.set_flow_run_state(self.outcome.flow_run_id, state, force=True)

    def _confirm(self) -> bool:
        """Read the task runs back until each is there in its final state."""
        missing = dict(self.expected)
        delay = 0.05
        while True:
            try:
                missing = self._still_missing(missing)
            except Exception as exc:
                self.outcome.errors.append(f"reading task runs back failed: {exc!r}")
            self.outcome.missing = len(missing)
            if not missing:
                return True
            if time.monotonic() >= self._deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _still_missing(self, missing: dict[uuid.UUID, str]) -> dict[uuid.UUID, str]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        ids = list(missing)
        left = dict(missing)
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            runs = self._client.read_task_runs(
                task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)), limit=len(chunk))
            for run in runs:
                if run.state_type is not None and run.state_type.value == left.get(run.id):
                    del left[run.id]
        return left


def coalesce(snaps: list[Snapshot]) -> list[Snapshot]:
    """Under load, fold the states a run went through before it was shipped.

    A batch of up to LOADED snapshots is shipped whole (full state history). Beyond,
    only the last state of each run is kept, plus Scheduled (the delay) and Running
    ones; the task run keeps its start and end times either way.
    """
    if len(snaps) <= LOADED:
        return snaps
    last = {snap.id: i for i, snap in enumerate(snaps)}
    heavy = len(snaps) > 4 * LOADED
    keep = {RunState.SCHEDULED} if heavy else {RunState.SCHEDULED, RunState.RUNNING}
    return [snap for i, snap in enumerate(snaps) if last[snap.id] == i or snap.state in keep]


def _experiment() -> None:
    """Stands for an experiment run recorded by nepi-prefect."""


def _flow() -> Any:
    from prefect.flows import Flow

    global _FLOW
    if _FLOW is None:
        _FLOW = Flow(fn=_experiment, name=FLOW_NAME)
    return _FLOW


def _task() -> Any:
    from prefect.tasks import Task

    global _TASK
    if _TASK is None:
        _TASK = Task(fn=_experiment, name=FLOW_NAME)
    return _TASK


_FLOW: Any = None
_TASK: Any = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)

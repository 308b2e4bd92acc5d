"""One run's record on its way from the journal to the Prefect API.

A :class:`Delivery` holds what is journaled but not yet on the server. The
live recorder feeds it (and ships it while the experiment runs); a later
process rebuilds it from an orphaned journal (:mod:`.replay`) and ships the
rest. Either way: open the flow run (idempotently), post events and logs in
order, mark what was accepted in the journal, then the artifact and the final
state; then the resource feed, and drop the journal.

The resource feed (the routine ``nepi.resource.<state>`` events: ready, started,
stopped...) is a stream of its own, posted only while the server keeps up with
the task runs. The server's cost is per event, whatever the event (see
docs/prefect.md): under a burst, the feed would otherwise queue ahead of the task
runs and the run page would fill at half the speed. Failures and metrics are not
feed: automations act on them, and they go with the task runs.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Iterable

from nepi_prefect.orchestration import server
from nepi_prefect.orchestration.api import PrefectAPI
from nepi_prefect.orchestration.events import related
from nepi_prefect.orchestration.journal import Contents, Journal

BATCH = 500            # events or log records per request
SETTLE = 1.0           # seconds a passing task-run state (Pending, Running) may wait for its successor
WINDOW = 4000          # task-run events in flight (posted, not yet seen on the server)
FEED_WINDOW = 1000     # feed events in flight: about three seconds of a 2-core server's work
FEED_PATIENCE = 60.0   # seconds after which the feed stops waiting for what the server should show


@dataclass
class Target:
    """Where the record goes: settings and run context captured in the user's thread."""

    attach: str                          # "new" | "current" | "subflow"
    flow_run_name: str
    tags: list[str]
    parameters: dict[str, Any]
    started: str                         # ISO time the experiment began
    api_url: str | None = None           # None: $PREFECT_API_URL, else the local server
    api_key: str | None = None
    auth_string: str | None = None
    parent_flow_run_id: str | None = None   # for "subflow" and "current"
    parent_flow_id: str | None = None

    def header(self) -> dict[str, Any]:
        """What the journal keeps of it (never the credentials)."""
        return {k: v for k, v in asdict(self).items() if k not in ("api_key", "auth_string")}

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> "Target":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in header.items() if k in names})


class Delivery:
    """The undelivered part of one run's record, and how to ship it."""

    def __init__(self, journal: Journal, target: Target, contents: Contents | None = None):
        self.journal = journal
        self.target = target
        self.key = journal.path.stem
        self.lock = threading.Lock()
        self.api: PrefectAPI | None = None
        self.flow_run_id: uuid.UUID | None = None
        self.flow_id: uuid.UUID | None = None
        self.events: list[tuple[int, dict[str, Any]]] = []
        #: when each passing task-run state was journaled (monotonic), by journal number
        self._passing_since: dict[int, float] = {}
        self.logs: list[tuple[int, dict[str, Any]]] = []
        self.feed: list[tuple[int, dict[str, Any]]] = []
        self.n_events = self.n_logs = self.acked_events = self.acked_logs = 0
        self.n_feed = self.acked_feed = 0
        #: logs up to this number were posted and may be on the server without an ack
        #: (an answer lost to a timeout, an exit, a kill): asked about before posting again
        self.logs_unsure = 0
        self.closing: dict[str, Any] | None = None
        self._related: list[dict[str, str]] = []
        self._nepi_related: list[dict[str, str]] = []
        #: (events posted up to it, task run id, state timestamp) of each batch's last event
        self._checkpoints: collections.deque[tuple[int, uuid.UUID, str]] = collections.deque()
        self._posted = self._seen = 0
        #: (feed events posted up to it, its last event's id and time, when posted)
        self._feed_checkpoints: collections.deque[tuple[int, str, str, float]] = collections.deque()
        self._feed_posted = self._feed_seen = 0
        self._feed_held_since: float | None = None   # since when task runs hold the feed back
        self.run_closed = False   # the artifacts and the final state are on the server
        #: how many of the closing's artifacts the server has; whether it may have the
        #: next one already (an attempt whose answer was lost, or a journal read back)
        self.artifacts_done = 0
        self._artifact_unsure = contents is not None
        #: records (events and logs) the server accepted, and when the first post began
        self.accepted = 0
        self.shipping_since: float | None = None
        if contents is not None:
            self._restore(contents)

    def _restore(self, contents: Contents) -> None:
        if contents.flow is not None:
            self.flow_run_id = uuid.UUID(contents.flow["flow_run_id"])
            self.flow_id = _uuid(contents.flow.get("flow_id"))
        self.acked_events, self.acked_logs = contents.acked_events, contents.acked_logs
        self.acked_feed = contents.acked_feed
        self.logs_unsure = contents.posting_logs
        self.events = [item for item in contents.events if item[0] > self.acked_events]
        self.logs = [item for item in contents.logs if item[0] > self.acked_logs]
        self.feed = [item for item in contents.feed if item[0] > self.acked_feed]
        self.n_events = contents.events[-1][0] if contents.events else 0
        self.n_logs = contents.logs[-1][0] if contents.logs else 0
        self.n_feed = contents.feed[-1][0] if contents.feed else 0
        self.closing = contents.closing
        self.artifacts_done = contents.artifacts_done
        self.run_closed = contents.run_closed
        self._await_writers_task_runs(contents)

    def _await_writers_task_runs(self, contents: Contents) -> None:
        """The journal's writer posted task runs the server may not have written yet:
        hold the feed back (as if more than a batch were in flight) until the last of
        them that was accepted shows on the server."""
        last = _newest_task_run_state(event for n, event in reversed(contents.events)
                                      if n <= self.acked_events)
        if last is not None:
            self._posted = BATCH + 1
            self._checkpoint(last)

    # -- journaling (callers hold no lock) -------------------------------------------
    def add_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            if is_feed(event):
                self.n_feed += 1
                self.journal.write({"k": "fe", "n": self.n_feed, "e": event})
                self.feed.append((self.n_feed, event))
                return
            self.n_events += 1
            self.journal.write({"k": "ev", "n": self.n_events, "e": event})
            self.events.append((self.n_events, event))
            if _passing(event):
                self._passing_since[self.n_events] = time.monotonic()

    def add_log(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.n_logs += 1
            self.journal.write({"k": "log", "n": self.n_logs, "l": record})
            self.logs.append((self.n_logs, record))

    def add_close(self, closing: dict[str, Any]) -> None:
        with self.lock:
            self.closing = closing
            self.journal.write({"k": "close", **closing})
            self.journal.sync()

    def flush(self, sync: bool = False) -> None:
        """Hand what was written to the OS (survives a kill); fsync now and then."""
        with self.lock:
            if sync:
                self.journal.sync()
            else:
                self.journal._fh.flush()
                self.journal.sync_if_due()

    @property
    def pending(self) -> int:
        """Records not yet accepted by the server, the feed's included."""
        return len(self.events) + len(self.logs) + len(self.feed)

    @property
    def run_pending(self) -> int:
        """Records of the run page (task runs, logs, other events) not yet accepted."""
        return len(self.events) + len(self.logs)

    # -- shipping ---------------------------------------------------------------------
    def connect(self) -> None:
        """Reach the API (starting the local server if it is the target) and open the
        flow run. Raises when the API cannot be reached."""
        tgt = self.target
        if self.api is None:
            url = tgt.api_url or server.api_url()
            self.api = PrefectAPI(url, api_key=tgt.api_key, auth_string=tgt.auth_string)
        if self.flow_run_id is None:
            self._open_flow_run()
        self._related = related(self.flow_run_id, self.flow_id, tgt.tags)
        # nepi's own events relate to the flow run, besides their own (the experiment,
        # the run, the task run): each related resource is a row the server writes, and
        # the flow and tag ones would add three rows to each event's five
        self._nepi_related = related(self.flow_run_id, None, [])

    def _open_flow_run(self) -> None:
        tgt = self.target
        if tgt.attach == "current":
            flow_run_id, flow_id = uuid.UUID(tgt.parent_flow_run_id), _uuid(tgt.parent_flow_id)
        else:
            parent = None
            if tgt.attach == "subflow":
                parent = self.api.create_task_run(uuid.UUID(tgt.parent_flow_run_id),
                                                  tgt.flow_run_name, tgt.tags, self.key)
            flow_id = self.api.flow_id()
            flow_run_id = self.api.create_flow_run(
                flow_id, tgt.flow_run_name, tgt.tags, tgt.parameters, self.key,
                parent_task_run_id=parent)
        with self.lock:
            self.flow_run_id, self.flow_id = flow_run_id, flow_id
            self.journal.write({"k": "flow", "flow_run_id": str(flow_run_id),
                                "flow_id": str(flow_id) if flow_id else None})
            self.journal._fh.flush()

    def ship(self, stop: threading.Event | None = None, settle: float = 0.0) -> None:
        """Post what is pending, oldest first, and mark it accepted; then as much of the
        feed as the server has room for now (:meth:`ship_feed`). Raises on failure.

        With ``settle``, a task run's Pending or Running state younger than that many
        seconds is held back (and what follows it), so that a run ending within that
        time goes out as one event (see :func:`_superseded`); a state that lasts is
        shown ``settle`` seconds late."""
        with self.lock:
            superseded = _superseded(self.events)
            ready = self._settled(superseded, settle)
        while ready:
            with self.lock:
                events = self.events[:min(BATCH, ready)]
            if not events:
                break
            ready -= len(events)
            posting = [event for n, event in events if n not in superseded]
            if self.shipping_since is None:
                self.shipping_since = time.monotonic()
            self._wait_for_room(len(posting), stop)
            if posting:
                self._post_events(posting)
            self._posted += len(posting)
            last = _newest_task_run_state(reversed(posting))
            if last is not None:
                self._checkpoint(last)
            self._accepted(events=len(events), upto=events[-1][0])
        while True:
            with self.lock:
                logs = self.logs[:BATCH]
            if not logs:
                break
            if logs[0][0] <= self.logs_unsure:   # exactly the batch posted then
                logs = [item for item in logs if item[0] <= self.logs_unsure]
                if self._logs_stored([record for _, record in logs]):
                    self._accepted(logs=len(logs), upto=logs[-1][0])
                    continue
            self._posting_logs(logs[-1][0])
            flow_run = str(self.flow_run_id)
            self.api.post_logs([{**record, "flow_run_id": flow_run} for _, record in logs])
            self._accepted(logs=len(logs), upto=logs[-1][0])
        self.ship_feed(stop, wait=False)

    def _posting_logs(self, upto: int) -> None:
        """Journal that logs up to ``upto`` are about to be posted: a log line has no id
        the server could deduplicate by, so whoever ships them next asks first."""
        with self.lock:
            self.logs_unsure = upto
            self.journal.write({"k": "posting", "log": upto})
            self.journal._fh.flush()

    def _logs_stored(self, records: list[dict[str, Any]]) -> bool:
        """The server has these log lines (a batch is written whole or not at all)."""
        wanted = collections.Counter(_log_key(record) for record in records)
        stamps = [stamp for stamp, *_ in wanted]
        stored = collections.Counter(_log_key(line) for line in self.api.logs_between(
            self.flow_run_id, min(stamps).isoformat(), max(stamps).isoformat()))
        return all(stored[key] >= count for key, count in wanted.items())

    def ship_feed(self, stop: threading.Event | None = None, wait: bool = True) -> None:
        """Post the resource feed while the server keeps up with the task runs (at
        most FEED_WINDOW of it in flight). With ``wait``, until all of it is posted
        (or ``stop`` is set); else only what may go now."""
        delay = 0.05
        while True:
            with self.lock:
                batch = self.feed[:BATCH]
            if not batch:
                return
            if not self._feed_has_room(len(batch)):
                if not wait or stop is not None and stop.is_set():
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = 0.05
            self._post_events([event for _, event in batch])
            self._feed_posted += len(batch)
            last = batch[-1][1]
            self._feed_checkpoints.append((self._feed_posted, last["id"], last["occurred"],
                                           time.monotonic()))
            self._accepted(feed=len(batch), upto=batch[-1][0])

    def _post_events(self, events: list[dict[str, Any]]) -> None:
        self.api.post_events([{**event, "related": self._nepi_related + event["related"]}
                              if "related" in event else {**event, "related": self._related}
                              for event in events])

    def _checkpoint(self, last: dict[str, Any]) -> None:
        """Events posted so far are on the server once it shows ``last``'s task run in
        ``last``'s state."""
        self._checkpoints.append((self._posted, _task_run_id(last),
                                  last["resource"]["prefect.state-timestamp"]))

    def _feed_has_room(self, n: int) -> bool:
        """The server has caught up with the task runs (at most a batch of them in
        flight) and with all but FEED_WINDOW - n of the feed."""
        if self._task_runs_in_flight() > BATCH:
            self._probe_task_runs()
            now = time.monotonic()
            if self._task_runs_in_flight() > BATCH:
                # a server restarted meanwhile may never show them: wait, not forever
                self._feed_held_since = self._feed_held_since or now
                if now - self._feed_held_since < FEED_PATIENCE:
                    return False
            self._feed_held_since = None
        if self._feed_posted + n - self._feed_seen <= FEED_WINDOW:
            return True
        self._probe_feed()
        return self._feed_posted + n - self._feed_seen <= FEED_WINDOW

    def _task_runs_in_flight(self) -> int:
        return self._posted - self._seen if self._checkpoints else 0

    def _probe_feed(self) -> None:
        """Advance past the feed batches whose last event the server has stored (or
        that were posted FEED_PATIENCE ago: accepted is delivered; the window only
        paces the server)."""
        probe = list(self._feed_checkpoints)[:20]
        stored = self.api.events_stored([cp[1] for cp in probe], min(cp[2] for cp in probe),
                                        max(cp[2] for cp in probe))
        old = time.monotonic() - FEED_PATIENCE
        while self._feed_checkpoints:
            position, event_id, _, posted = self._feed_checkpoints[0]
            if event_id not in stored and posted > old:
                break
            self._feed_seen = position
            self._feed_checkpoints.popleft()

    def _settled(self, superseded: set[int], settle: float) -> int:
        """How many of the pending events can go now (callers hold the lock): up to the
        first passing state, not yet superseded, that is younger than ``settle``."""
        if settle <= 0:
            return len(self.events)
        young = time.monotonic() - settle
        for i, (n, _) in enumerate(self.events):
            if n not in superseded and self._passing_since.get(n, young) > young:
                return i
        return len(self.events)

    def _accepted(self, upto: int, events: int = 0, logs: int = 0, feed: int = 0) -> None:
        with self.lock:
            self.accepted += events + logs + feed
            if events:
                for n, _ in self.events[:events]:
                    self._passing_since.pop(n, None)
                del self.events[:events]
                self.acked_events = upto
            if logs:
                del self.logs[:logs]
                self.acked_logs = upto
            if feed:
                del self.feed[:feed]
                self.acked_feed = upto
            self.journal.write({"k": "ack", "ev": self.acked_events, "log": self.acked_logs,
                                "fe": self.acked_feed})
            self.journal._fh.flush()

    def _wait_for_room(self, n: int, stop: threading.Event | None) -> None:
        """Back-pressure: the server queues events in memory (10000 per consumer) and
        drops the overflow. Keep at most WINDOW in flight; a batch's last event, seen
        on the server in that state, acknowledges the batch."""
        delay = 0.05
        while self._posted + n - self._seen > WINDOW and self._checkpoints:
            if stop is not None and stop.is_set():
                return
            self._probe_task_runs()
            if self._posted + n - self._seen > WINDOW:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _probe_task_runs(self) -> None:
        """Advance past the batches whose last task run the server shows in that state."""
        probe = [cp[1] for cp in list(self._checkpoints)[:20]]
        states = self.api.task_run_states(probe)
        while self._checkpoints:
            position, run_id, stamp = self._checkpoints[0]
            seen = states.get(run_id)
            if seen is None or seen[1] is None or \
                    datetime.fromisoformat(seen[1]) < datetime.fromisoformat(stamp):
                break
            self._seen = position
            self._checkpoints.popleft()

    def finish(self, stop: threading.Event | None = None, wait: bool = True) -> bool:
        """The artifacts and the final state (once the rest of the run is accepted),
        then the feed; then the journal goes. False if some of the feed is left: it
        could not go at once (without ``wait``), or ``stop`` came first."""
        self.close_run()
        self.ship_feed(stop, wait=wait)
        if self.feed:
            return False
        with self.lock:
            self.journal.remove()
        return True

    def close_run(self) -> None:
        """The artifacts and the final state (once): the run page is complete."""
        if self.run_closed:
            return
        closing = self.closing
        artifacts = closing.get("artifacts") or \
            ([closing["artifact"]] if closing.get("artifact") else [])
        for done, artifact in enumerate(artifacts[self.artifacts_done:], self.artifacts_done + 1):
            self._create_once(artifact)
            with self.lock:
                self.artifacts_done = done
                self.journal.write({"k": "art", "done": done})
                self.journal._fh.flush()
        if self.target.attach != "current":
            self.api.set_flow_run_state(self.flow_run_id, closing["type"], closing["name"],
                                        closing["message"])
        with self.lock:
            self.run_closed = True
            self.journal.write({"k": "closed"})   # a replay must not set the state twice
            self.journal._fh.flush()

    def _create_once(self, artifact: dict[str, Any]) -> None:
        """Create the artifact, unless an earlier attempt whose answer was lost (a
        timeout, a 503 after the write) did: a retried close must not show the run's
        summary twice."""
        if self._artifact_unsure and self.api.has_artifact(self.flow_run_id, artifact["key"]):
            self._artifact_unsure = False
            return
        self._artifact_unsure = True
        self.api.create_artifact({**artifact, "flow_run_id": str(self.flow_run_id)})
        self._artifact_unsure = False

    def ui_link(self) -> str | None:
        if self.api is None or self.flow_run_id is None:
            return None
        return f"{server.ui_url(self.api.url)}/runs/flow-run/{self.flow_run_id}"


def _superseded(events: list[tuple[int, dict[str, Any]]]) -> set[int]:
    """The journal numbers of task-run events that a later pending event of the same
    task run makes redundant. The server's cost is per event (see docs/prefect.md);
    the last event carries the run's start and end times, so a run that already
    ended before it was shipped goes out as one event (and its
    Scheduled state, if it was delayed). Runs still going are shipped state by state,
    so the UI stays live. The journal keeps them all."""
    last: dict[str, int] = {}
    superseded = set()
    for n, event in events:
        resource = event["resource"]["prefect.resource.id"]
        if resource.startswith("prefect.task-run.") and \
                event["event"] != "prefect.task-run.Scheduled":   # the delay stays visible
            if resource in last:
                superseded.add(last[resource])
            last[resource] = n
    return superseded


def is_feed(event: dict[str, Any]) -> bool:
    """A routine ``nepi.resource.<state>`` event (not a failure: automations act on those)."""
    name = event["event"]
    return name.startswith("nepi.resource.") and name != "nepi.resource.failed"


def _newest_task_run_state(newest_first: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first task-run state event (one carrying its state's timestamp) of ``newest_first``."""
    return next((e for e in newest_first if "prefect.state-timestamp" in e["resource"]), None)


def _passing(event: dict[str, Any]) -> bool:
    """A task run's Pending or Running state: one its next state usually follows soon."""
    return event["event"] in ("prefect.task-run.Pending", "prefect.task-run.Running")


def _task_run_id(event: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(event["resource"]["prefect.resource.id"].rpartition(".")[2])


def _log_key(record: dict[str, Any]) -> tuple:
    """What identifies a log line, as sent or as the server gives it back (which strips
    null bytes, and may write the time another way)."""
    return (datetime.fromisoformat(record["timestamp"]), record["level"], record["name"],
            record["message"].replace("\x00", ""), record.get("task_run_id"))


def _uuid(text: str | None) -> uuid.UUID | None:
    return uuid.UUID(text) if text else None


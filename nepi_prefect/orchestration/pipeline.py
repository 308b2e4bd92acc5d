"""The recorder's two background threads.

The engine's dispatcher threads only put snapshots on a queue. The *journal*
thread turns them into task-run events and log records and appends them to the
run's journal (handed to the OS at once, fsync'd every second and at close).
The *sender* thread reaches the API (starting the local server if needed, which
may take a while: the journal keeps everything meanwhile), opens the flow run
and ships the journal as it grows. A slow or missing API delays the sender,
never the experiment, and loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from nepi_prefect.execution.recording import RunState
from nepi_prefect.orchestration import replay
from nepi_prefect.orchestration.delivery import SETTLE, Delivery
from nepi_prefect.orchestration.events import Snapshot, TaskRunEvents, log_record
from nepi_prefect.orchestration.local_server import ServerError

log = logging.getLogger("nepi_prefect.orchestration")

LOADED = 200           # snapshots in one drain beyond which superseded states are folded
LINGER = 0.05          # seconds to let a batch fill before shipping it
RETRY_MAX = 5.0        # seconds between attempts while the API is unreachable


@dataclass
class Outcome:
    """What the threads achieved; read by ``PrefectRecorder``."""

    flow_run_id: Any = None
    api_url: str | None = None
    ui_link: str | None = None
    delivered: bool = False              # the run's record is on the server (its feed may follow)
    feed_left: int = 0                   # resource-feed events left to the journal at the end
    journal: str | None = None           # where it waits otherwise
    errors: list[str] = field(default_factory=list)
    #: the last state type journaled per task run (what the server should end up with)
    expected: dict[Any, str] = field(default_factory=dict)


class Pipeline:
    """Journal and ship one run's record."""

    def __init__(self, delivery: Delivery, tags: list[str]):
        self.delivery = delivery
        self.queue: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self.outcome = Outcome(journal=str(delivery.journal.path))
        self.journaled = threading.Event()     # the close record is durable
        self.done = threading.Event()          # the sender ended (delivered or stopped)
        self.stop = threading.Event()          # close() stopped waiting: let the journal be
        self.failed_after_close = threading.Event()
        self.connecting = False
        self._wake = threading.Event()
        self._builder = TaskRunEvents(tags)
        self._journal_thread = threading.Thread(target=self._journal_loop, daemon=True,
                                                name="nepi-prefect-journal")
        self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                        name="nepi-prefect-sender")

    def start(self) -> None:
        self._journal_thread.start()
        self._sender.start()

    # -- the journal thread --------------------------------------------------------------
    def _journal_loop(self) -> None:
        try:
            while True:
                items = [self.queue.get()]
                while len(items) < 5000:
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                if self._journal(items):
                    return
        except Exception as exc:   # never let the record kill anything else
            self.outcome.errors.append(f"journal thread failed: {exc!r}")
            log.debug("journal thread failed", exc_info=True)
            self.journaled.set()

    def _journal(self, items: list[tuple]) -> bool:
        snaps = [item[1] for item in items if item[0] == "run"]
        for snap in coalesce(snaps):
            self.delivery.add_event(self._builder.event(snap))
            self.outcome.expected[snap.id] = snap.state.value
        closing = None
        for item in items:
            if item[0] == "log":
                _, run_id, logger, level, message, at = item
                self.delivery.add_log(log_record(run_id, logger, level, message, at))
            elif item[0] == "event":   # nepi's own (nepi.resource.*, nepi.metric), built
                self.delivery.add_event(item[1])
            elif item[0] == "close":
                closing = item[1]
        if closing is not None:
            self.delivery.add_close(closing)
            self.journaled.set()
        else:
            self.delivery.flush()
        self._wake.set()
        return closing is not None

    # -- the sender thread -----------------------------------------------------------------
    def _send_loop(self) -> None:
        try:
            self._send()
        except Exception as exc:
            self.outcome.errors.append(f"sender thread failed: {exc!r}")
            log.debug("sender thread failed", exc_info=True)
        finally:
            if not self.outcome.delivered or self.delivery.feed:
                self.journaled.wait(60)
                self.outcome.feed_left = len(self.delivery.feed)
                self.delivery.journal.release()
                if self.delivery.api is not None:   # this process may live on: ship it later
                    replay.ship_orphans_in_background(self.delivery.api.url)
            self.done.set()

    def _send(self) -> None:
        delay, connected = 0.2, False
        while not self.stop.is_set():
            closing = self.journaled.is_set()
            try:
                if not connected:
                    self._connect()
                    connected = True
                # while the run goes on, a passing state waits a moment for its successor
                self.delivery.ship(self.stop, settle=0.0 if closing else SETTLE)
                if closing and self.delivery.run_pending == 0:
                    # the run page first (artifacts, final state), then the rest of the feed
                    self.delivery.close_run()
                    self.outcome.delivered = True
                    # The feed goes if the server has room now; the rest is safe in the
                    # journal, shipped in the background: the exit never waits for ingest.
                    self.delivery.finish(self.stop, wait=False)
                    return
                delay = 0.2
            except Exception as exc:
                connected = connected and self.delivery.api is not None and \
                    self.delivery.flow_run_id is not None
                self._failed(exc, closing)
                self._wake.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._wake.wait(0.5)
            self._wake.clear()
            time.sleep(LINGER)   # let a batch fill: fewer, larger requests

    def _connect(self) -> None:
        self.connecting = True
        try:
            self.delivery.connect()
        finally:
            self.connecting = False
        self.outcome.flow_run_id = self.delivery.flow_run_id
        self.outcome.api_url = self.delivery.api.url
        self.outcome.ui_link = self.delivery.ui_link()
        # Records an earlier process left behind go out too, in the background.
        replay.ship_orphans_in_background(self.delivery.api.url)

    def _failed(self, exc: Exception, closing: bool) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not self.outcome.errors or self.outcome.errors[-1] != error:
            self.outcome.errors.append(error)
        log.debug("Prefect record: %s", error)
        # Nobody listening (or the local server would not start): the journal keeps the
        # record for later. A busy server (503, a slow answer) is worth the wait.
        if closing and isinstance(exc, (httpx.ConnectError, ServerError)):
            self.failed_after_close.set()

    def waiting_for(self) -> str:
        """What the sender is waiting for, for the user."""
        if self.delivery.api is None or self.connecting and self.delivery.flow_run_id is None:
            return "the Prefect server to answer"
        pending = self.delivery.run_pending
        what = f"{pending} records" if pending else "the end of the record"
        return f"the Prefect API at {self.delivery.api.url} to accept {what}"

    def wake(self) -> None:
        self._wake.set()


def coalesce(snaps: list[Snapshot]) -> list[Snapshot]:
    """Under load, fold the states a run went through before it was journaled.

    Up to LOADED snapshots are kept whole (full state history). Beyond, only the
    last state of each run is kept, plus Scheduled (the delay) and Running ones;
    the task run keeps its start and end times either way.
    """
    if len(snaps) <= LOADED:
        return snaps
    last = {snap.id: i for i, snap in enumerate(snaps)}
    heavy = len(snaps) > 4 * LOADED
    keep = {RunState.SCHEDULED} if heavy else {RunState.SCHEDULED, RunState.RUNNING}
    return [snap for i, snap in enumerate(snaps) if last[snap.id] == i or snap.state in keep]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)

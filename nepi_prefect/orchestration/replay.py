"""Ship the journals other processes left behind.

A journal is an orphan when no process holds its lock: its writer was killed
(SIGKILL, a crash), or exited before the server had the whole record (server
down, close timed out). Any nepi-prefect process that reaches an API ships the
orphans meant for it, in a background thread; ``nepi-prefect server flush``
ships them all. A run whose journal has no close record never reached its
end: its unfinished task runs and its flow run end ``Crashed``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from nepi_prefect import settings
from nepi_prefect.orchestration import journal as journals
from nepi_prefect.orchestration.delivery import Delivery, Target
from nepi_prefect.orchestration.events import crashed

log = logging.getLogger("nepi_prefect.orchestration")

BUSY_PATIENCE = 120.0   # seconds to keep trying a server that answers "busy"

_threads: dict[str, threading.Thread] = {}
_lock = threading.Lock()


@dataclass
class Report:
    """What a flush did."""

    shipped: list[str] = field(default_factory=list)     # flow run names
    crashed: list[str] = field(default_factory=list)     # of those, the ones marked Crashed
    busy: int = 0                                        # journals still being written
    failed: list[tuple[str, str]] = field(default_factory=list)   # (journal, why)


def ship_orphans_in_background(api_url: str) -> None:
    """Ship the orphaned journals meant for ``api_url`` in a daemon thread (unless one
    is at it already). It never delays anything: what it has not shipped when the
    process exits stays in the journal for the next one."""
    with _lock:
        if api_url in _threads and _threads[api_url].is_alive():
            return
        thread = _threads[api_url] = threading.Thread(
            target=_ship_quietly, args=(api_url,), daemon=True, name="nepi-prefect-orphans")
        thread.start()


def _ship_quietly(api_url: str) -> None:
    try:
        flush(only_for=api_url)
    except Exception:
        log.debug("shipping orphaned journals failed", exc_info=True)


def flush(only_for: str | None = None) -> Report:
    """Ship every orphaned journal (only those whose API is ``only_for``, if given)."""
    report = Report()
    for path in journals.pending():
        opening = journals.header(path)
        if only_for is not None and opening is not None and \
                _api_of(Target.from_header(opening)) != only_for:
            continue   # another API's: not even read (a journal may hold megabytes)
        adopted = journals.Journal.adopt(path)
        if adopted is None:
            report.busy += path.exists()
            continue
        journal, contents = adopted
        target = Target.from_header(contents.header)
        if only_for is not None and _api_of(target) != only_for:
            journal.release()
            continue
        _with_credentials(target)
        try:
            if ship(journal, target, contents):
                report.crashed.append(target.flow_run_name)
            report.shipped.append(target.flow_run_name)
        except Exception as exc:
            journal.release()
            report.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
    return report


def ship(journal: journals.Journal, target: Target, contents: journals.Contents) -> bool:
    """Deliver an adopted journal; True if the run had crashed (no close record)."""
    delivery = Delivery(journal, target, contents)
    crash = contents.closing is None
    if crash:
        _close_as_crashed(delivery, contents)
    deadline = time.monotonic() + BUSY_PATIENCE
    delay = 0.5
    while True:
        try:
            delivery.connect()
            delivery.ship()
            delivery.finish()
            return crash
        except httpx.HTTPError as exc:
            # Nobody listening: leave it for later. Busy (503, slow): try again a while.
            if isinstance(exc, httpx.ConnectError) or time.monotonic() >= deadline or \
                    getattr(getattr(exc, "response", None), "status_code", 503) < 500:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _close_as_crashed(delivery: Delivery, contents: journals.Contents) -> None:
    header = contents.header
    message = (f"the process (pid {header.get('pid')} on {header.get('host')}) ended before "
               f"the experiment did; the record holds what happened until then")
    when = _last_moment(contents)
    last: dict[str, dict[str, Any]] = {}
    for _, event in contents.events:
        last[event["resource"]["prefect.resource.id"]] = event
    for event in last.values():
        ended = crashed(event, when, message)
        if ended is not None:
            delivery.add_event(ended)
    delivery.add_close({"type": "CRASHED", "name": "Crashed", "message": message,
                        "at": when.isoformat(), "artifact": None})


def _last_moment(contents: journals.Contents) -> datetime:
    moments = [datetime.fromisoformat(e["occurred"])
               for _, e in contents.events[-50:] + contents.feed[-50:]]
    moments += [datetime.fromisoformat(r["timestamp"]) for _, r in contents.logs[-50:]]
    moments.append(datetime.fromisoformat(contents.header["started"]))
    return max(moments).astimezone(timezone.utc)


def _api_of(target: Target) -> str | None:
    return target.api_url or settings.prefect_api_url() or _local_api()


def _local_api() -> str | None:
    from nepi_prefect.orchestration import local_server

    state = local_server.running()
    return state.api_url if state is not None else None


def _with_credentials(target: Target) -> None:
    """Credentials are never journaled: take this process's, for the same API."""
    if target.api_url and target.api_url == settings.prefect_api_url():
        target.api_key, target.auth_string = settings.prefect_credentials()


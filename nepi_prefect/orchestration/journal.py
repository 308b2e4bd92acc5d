"""The durable local journal of a run's Prefect record.

Every record (task-run event, log line, the close request) is appended to
``<journal dir>/<key>.jsonl`` before it is shipped; what the server accepted is
marked by ``ack`` lines; once the whole record is on the server the file is
removed. The writing process holds an exclusive ``flock`` on its file for its
whole life, so a journal whose lock can be taken is an orphan (its writer died
or gave up) and any nepi-prefect process may ship it.

Lines (JSON objects, ``k`` is the kind):

* ``open``: the run (name, tags, parameters, where it attaches, writer pid, start)
* ``flow``: the flow run (and flow) the server gave it
* ``ev`` / ``log`` / ``fe``: an event, a log record, or an event of the resource
  feed (routine ``nepi.resource.<state>`` events, shipped after the rest), numbered
  ``n`` per kind
* ``ack``: events, logs and feed events up to these numbers are on the server
* ``posting``: log records up to this number are being posted; until their ``ack``
  the server may or may not have them (log lines carry no id the server could
  deduplicate by, so a shipper asks before posting them again)
* ``close``: the final state and the summary artifact
* ``art`` / ``closed``: how many artifacts, and whether the final state, are on the server
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from nepi_prefect import settings

SYNC_EVERY = 1.0   # seconds between fsyncs while records come in


@dataclass
class Contents:
    """What a journal holds, as read back."""

    header: dict[str, Any]
    flow: dict[str, Any] | None = None
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    logs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    feed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    acked_events: int = 0
    acked_logs: int = 0
    acked_feed: int = 0
    posting_logs: int = 0       # logs up to this number were posted, perhaps without an answer
    closing: dict[str, Any] | None = None
    artifacts_done: int = 0     # how many of the closing's artifacts the server has
    run_closed: bool = False    # the final state is on the server (the feed may not be)


class Journal:
    """One run's journal file, open for appending, its lock held."""

    def __init__(self, path: Path, handle: Any):
        self.path = path
        self._fh = handle
        self._synced = time.monotonic()

    @classmethod
    def create(cls, key: str, header: dict[str, Any]) -> "Journal":
        folder = Path(settings.journal_dir())
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.jsonl"
        # Written under another name, then renamed: a shipper never finds a journal
        # without its header, nor takes its lock before the writer has it.
        partial = path.with_suffix(".partial")
        handle = open(partial, "xb")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        journal = cls(path, handle)
        journal.write({"k": "open", **header})
        journal.sync()
        os.rename(partial, path)
        return journal

    @classmethod
    def adopt(cls, path: Path) -> tuple["Journal", Contents] | None:
        """Take over an orphaned journal: None if its writer still holds it (or it is gone)."""
        try:   # never created: it may have been shipped and removed since the listing
            handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "ab")
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        if not path.exists():   # shipped and removed between our listing and our lock
            handle.close()
            return None
        contents = read(path)
        if contents is None:   # no header: an empty file an older version left behind
            with contextlib.suppress(OSError):
                path.unlink()
            handle.close()
            return None
        return cls(path, handle), contents

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (buffered; :meth:`sync` makes it durable)."""
        self._fh.write(orjson.dumps(record) + b"\n")

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = time.monotonic()

    def sync_if_due(self) -> None:
        if time.monotonic() - self._synced >= SYNC_EVERY:
            self.sync()

    def remove(self) -> None:
        """The record is on the server: drop the journal."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Stop writing; the file (and its lock) is left for another process."""
        with contextlib.suppress(OSError, ValueError):
            self._fh.flush()
            os.fsync(self._fh.fileno())
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()


def header(path: Path) -> dict[str, Any] | None:
    """A journal's first record (its target), without reading the rest."""
    try:
        with open(path, "rb") as handle:
            record = orjson.loads(handle.readline())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("k") == "open" else None


def read(path: Path) -> Contents | None:
    """The contents of a journal file (a torn last line, from a kill, is skipped)."""
    contents: Contents | None = None
    for record in _lines(path):
        kind = record.get("k")
        if kind == "open":
            contents = Contents(header=record)
        elif contents is None:
            continue
        elif kind == "flow":
            contents.flow = record
        elif kind == "ev":
            contents.events.append((record["n"], record["e"]))
        elif kind == "log":
            contents.logs.append((record["n"], record["l"]))
        elif kind == "fe":
            contents.feed.append((record["n"], record["e"]))
        elif kind == "ack":
            contents.acked_events = max(contents.acked_events, record.get("ev", 0))
            contents.acked_logs = max(contents.acked_logs, record.get("log", 0))
            contents.acked_feed = max(contents.acked_feed, record.get("fe", 0))
        elif kind == "posting":
            contents.posting_logs = max(contents.posting_logs, record.get("log", 0))
        elif kind == "close":
            contents.closing = record
        elif kind == "closed":
            contents.run_closed = True
        elif kind == "art":
            contents.artifacts_done = max(contents.artifacts_done, record.get("done", 0))
    return contents


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except OSError:
        return
    for line in data.splitlines():
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


def pending() -> list[Path]:
    """Every journal file, oldest first (live ones included: adopt() tells)."""
    folder = Path(settings.journal_dir())
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.jsonl"), key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0

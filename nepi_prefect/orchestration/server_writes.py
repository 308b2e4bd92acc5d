"""How the local server writes events, log lines and task-run states to SQLite: no
batch lost to a duplicate, and statements compiled once.

Prefect 3.8.8's SQLite writers meet the record of a large experiment badly:

- **Loss.** The event writer (``prefect.server.events.storage.database.
  _write_sqlite_events``) skips events already stored, and when a slice of the
  batch holds nothing else it still runs its INSERT, with no rows ("NOT NULL
  constraint failed: events.occurred"). The event persister then retries the whole
  flush five times and drops it, with every new event queued behind it: a
  1000-resource run lost 140 of its 4000 ``nepi.resource.*`` events this way.
  Events do arrive twice: nepi's delivery posts again what it has no answer for
  (it ships at least once), and Prefect's messaging forgets the ids of all but the
  last 1000 events it saw. An event twice in one batch fails the same way (UNIQUE).
- **Cost.** Events, log lines and the task-run recorder's states go in as one
  multi-row INSERT per slice, whose shape depends on its rows, so SQLAlchemy
  compiles it afresh on the server's event loop, and SQLite looks up each of its
  thousands of named parameters by name.
  1000 trivial RMs (8000 events, 40000 related-resource rows, 4000 log lines): the
  whole record on the server 23–26 s after the process exits with Prefect's
  writers, 15–19 s with these (docs/prefect.md).

These write the same rows (Prefect's own ``as_database_row``,
``as_database_resource_rows``, ``Log`` model and state dumps), each event once, with
``executemany`` statements that SQLAlchemy compiles once and caches; and the
task-run recorder upserts task runs as it does on PostgreSQL, with one statement
compiled once (:func:`record_task_runs_with_a_cached_upsert`).
:func:`install` puts them in place of Prefect's; ``server_main`` calls it.
"""

from __future__ import annotations

import inspect
import logging
import textwrap
from datetime import datetime, timezone
from typing import Sequence

import sqlalchemy as sa
from prefect.server.database import provide_database_interface
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.events.storage import database as event_storage
from prefect.server.logs import messaging as log_messaging
from prefect.server.models import logs as log_models
from prefect.server.schemas.actions import LogCreate
from prefect.server.schemas.core import Log, TaskRun
from prefect.server.services import task_run_recorder
from prefect.server.utilities.database import get_dialect
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
from prefect.utilities.collections import batched_iterable
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

#: events looked up (``id IN (...)``) and inserted per statement
SLICE = 500


def written_now() -> dict[str, datetime]:
    """The ``created`` and ``updated`` of the rows of one write. Given, they spare
    SQLAlchemy calling Prefect's column defaults (a pendulum ``now`` each) twice for
    every row: 30000 calls for 500 events and their resources."""
    stamp = datetime.now(timezone.utc)
    return {"created": stamp, "updated": stamp}


async def write_sqlite_events(session: AsyncSession, events: Sequence[ReceivedEvent]) -> None:
    """Insert the events not yet stored (each once) and their resources."""
    db = provide_database_interface()
    for part in batched_iterable({event.id: event for event in events}.values(), SLICE):
        stored = set((await session.scalars(
            sa.select(db.Event.id).where(db.Event.id.in_([event.id for event in part])))).all())
        fresh = [event for event in part if event.id not in stored]
        if not fresh:
            continue
        stamps = written_now()
        await session.execute(sa.insert(db.Event.__table__),
                              [event.as_database_row() | stamps for event in fresh])
        await session.execute(sa.insert(db.EventResource.__table__),
                              [row | stamps for event in fresh
                               for row in event.as_database_resource_rows()])


async def create_logs(session: AsyncSession, logs: Sequence[LogCreate]) -> None:
    """Insert log lines and publish them, as Prefect's ``create_logs`` does."""
    db = provide_database_interface()
    full_logs = [Log(**log_models._sanitize_log_strings(log).model_dump()) for log in logs]
    if not full_logs:
        return
    stamps = written_now()
    await session.execute(sa.insert(db.Log.__table__),
                          [log.model_dump(exclude={"created", "updated"}) | stamps
                           for log in full_logs])
    await log_messaging.publish_logs(full_logs)


async def insert_task_run_states(session: AsyncSession, task_runs: list[TaskRun]) -> None:
    """Insert the states of a flush of the task-run recorder, each once, as Prefect's
    ``_insert_task_run_states`` does."""
    if not task_runs:
        return
    db = provide_database_interface()
    table = db.TaskRunState.__table__
    columns = set(table.columns.keys())
    stamps = written_now()
    rows = [stamps | {"task_run_id": task_run.id}
            | {key: value for key, value in task_run.state.model_dump().items() if key in columns}
            for task_run in task_runs]
    await session.execute(db.queries.insert(table).on_conflict_do_nothing(index_elements=["id"]),
                          rows)


#: the choice, in Prefect's task-run recorder, of its per-flush upsert on SQLite
MULTI_ROW_UPSERT = 'supports_insertmanyvalues = db.dialect.name == "postgresql"'


def record_task_runs_with_a_cached_upsert() -> bool:
    """Make the task-run recorder upsert task runs as it does on PostgreSQL: one
    statement compiled once, its rows given at execution (SQLAlchemy's
    "insertmanyvalues"), instead of a multi-row INSERT built and compiled afresh
    for each flush. The choice is one line of a 250-line function, so this compiles
    Prefect's own function with that line changed; if the line is not there (another
    Prefect), Prefect's stays, and this says so. SQLite has had the RETURNING it
    needs since 3.35."""
    function = task_run_recorder._record_bulk_task_run_events
    lines, first = inspect.getsourcelines(function)
    source = textwrap.dedent("".join(lines))
    if source.count(MULTI_ROW_UPSERT) != 1:
        log.warning("the task-run recorder is not the one nepi-prefect knows; "
                    "its upserts stay as they are")
        return False
    source = source.replace(MULTI_ROW_UPSERT, "supports_insertmanyvalues = True")
    # padded so that a traceback shows the lines of Prefect's file
    code = compile("\n" * (first - 1) + source, inspect.getsourcefile(function), "exec")
    defined: dict[str, object] = {}
    exec(code, vars(task_run_recorder), defined)
    task_run_recorder._record_bulk_task_run_events = defined[function.__name__]
    return True


def install() -> None:
    """Make a server on SQLite write events, log lines and task-run states with these
    (Prefect's callers look each up by name on each call). On PostgreSQL only the
    SQLite event writer is replaced, which that server never calls."""
    event_storage._write_sqlite_events = write_sqlite_events
    if get_dialect(PREFECT_API_DATABASE_CONNECTION_URL.value()).name == "sqlite":
        log_models.create_logs = create_logs
        task_run_recorder._insert_task_run_states = insert_task_run_states
        record_task_runs_with_a_cached_upsert()

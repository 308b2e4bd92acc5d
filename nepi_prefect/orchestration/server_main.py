"""``prefect`` (the CLI) with Python's cyclic garbage collector off the event loop,
nepi's intake of events (:mod:`.server_ingest`) and nepi's writers (:mod:`.server_writes`).

``python -m nepi_prefect.orchestration.server_main server start ...`` is
``prefect server start ...`` with three differences. The intake: Prefect reads
its event limits through its settings objects for every resource of every event,
and each consumer parses each event again (see :mod:`.server_ingest`). The
writers: Prefect's SQLite event writer drops whole batches when events arrive
twice, and its writers compile every statement afresh (see :mod:`.server_writes`).
The collector: Prefect's server on SQLite
froze for a minute at a time under concurrent runs (a sweep of 40 ping runs
took 130 s instead of 30 s, and "database is locked" errors followed). The cause:
a garbage collection on the event-loop thread freed a SQLite cursor whose
connection was, in aiosqlite's worker thread, waiting in SQLite's busy handler
for the write lock. Freeing the cursor needs that connection's mutex, so the
event loop stopped; and the transaction holding the write lock needed the event
loop to commit. Nothing moved until the busy timeout (60 s) failed the waiter.

Here automatic collection is off, and a thread of its own collects with the
same generational thresholds. A collection that has to wait for a connection
waits in that thread, without the GIL (the sqlite3 module releases it around
``sqlite3_reset``), so the event loop goes on and the lock holder commits.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

from prefect.cli import app

from nepi_prefect.orchestration import server_ingest, server_writes

#: seconds between looks at the allocation counts while collections are due (the
#: collector's own trigger is every 700 allocations). Looking every 50 ms let the
#: young generation grow large between collections, and its survivors made the
#: middle one expensive: 13.6 s of collection in a 50-point sweep, 6.3 s at 5 ms.
LOOK_EVERY = 0.005
#: the longest pause between looks while nothing is due (an idle server: 5 ms looks
#: cost 1.3 % of a core)
LOOK_IDLE = 0.1
#: seconds between full collections at least: one scans the whole heap (180 ms for a
#: server's 280000 objects here), and the generational thresholds alone would ask
#: for one every few seconds while a record comes in (CPython's own collector
#: also puts them off on a large heap)
FULL_EVERY = 60.0


def collect_in_background() -> threading.Thread:
    """Turn automatic collection off and collect from a daemon thread instead."""
    thresholds = gc.get_threshold()
    gc.disable()

    def collector() -> None:
        last_full, pause = time.monotonic(), LOOK_EVERY
        while True:
            time.sleep(pause)
            generation = due(gc.get_count(), thresholds,
                             full_allowed=time.monotonic() - last_full >= FULL_EVERY)
            if generation is None:
                pause = min(pause * 2, LOOK_IDLE)
                continue
            pause = LOOK_EVERY
            gc.collect(generation)
            if generation == 2:
                last_full = time.monotonic()

    thread = threading.Thread(target=collector, name="nepi-gc", daemon=True)
    thread.start()
    return thread


def due(counts: tuple[int, int, int], thresholds: tuple[int, ...],
        full_allowed: bool) -> int | None:
    """The generation to collect now, the oldest one due, like CPython's collector."""
    for generation in (2, 1, 0):
        if generation == 2 and not full_allowed:
            continue
        if thresholds[generation] and counts[generation] > thresholds[generation]:
            return generation
    return None


def main() -> int:
    collect_in_background()
    server_ingest.install()
    server_writes.install()
    sys.argv[0] = "prefect"
    return app()


if __name__ == "__main__":
    sys.exit(main())

"""The local Prefect server collects garbage off its event loop (server_main).

The stall it prevents, reproduced with SQLite alone: a collection on the thread
that must commit frees a cursor whose connection is, in another thread, waiting
in SQLite's busy handler for the lock that commit would release. The commit
then waits for the busy timeout (8 s here; Prefect's server: 60 s).
"""

from __future__ import annotations

import subprocess
import sys

from nepi_prefect.orchestration.server_main import due


BUSY_TIMEOUT = 8.0

STALL = f"""
import gc, linecache, sqlite3, sys, tempfile, threading, time, os, weakref
from pathlib import Path
from nepi_prefect.orchestration import server_main
gc.disable()   # until the moment: the garbage stays in the youngest generation
db = os.path.join(tempfile.mkdtemp(), "db")
writer = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout={BUSY_TIMEOUT})
waiter = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout={BUSY_TIMEOUT})
writer.execute("pragma journal_mode=wal")
writer.execute("create table t(x)")
class Cycle: pass
garbage = Cycle(); garbage.me = garbage
garbage.cursor = waiter.execute("select 1 union select 2")   # a statement still in use
freed = weakref.ref(garbage)
writer.execute("begin immediate"); writer.execute("insert into t values (1)")
tids = []
def wait_for_the_lock():
    tids.append(threading.get_native_id())
    try:
        waiter.execute("insert into t values (2)")
    except sqlite3.OperationalError:   # its snapshot is older than the commit
        pass
blocked = threading.Thread(target=wait_for_the_lock)
blocked.start()
def in_busy_wait():   # SQLite's busy handler sleeps: (clock_)nanosleep
    return tids and Path(f"/proc/self/task/{{tids[0]}}/syscall").read_text().split()[0] in ("35", "230")
while not in_busy_wait():
    time.sleep(0.01)
if sys.argv[1] == "background":
    collector = server_main.collect_in_background()
    del garbage
    junk = [[i] for i in range(100000)]   # allocations: a collection is due
    def collecting():   # the collector's frame is in gc.collect, the GIL let go
        frame = sys._current_frames()[collector.ident]
        return "gc.collect(" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    seen, deadline = 0, time.monotonic() + 60
    while seen < 3:   # three looks in a row: it is stuck freeing the cursor
        seen = seen + 1 if collecting() else 0
        time.sleep(0.01)
        if time.monotonic() > deadline:
            sys.exit("the collector never reached the cursor")
else:
    gc.enable()
    del garbage
start = time.monotonic()
junk = [[i] for i in range(100000)]   # allocations: a collection is due
writer.execute("commit")
delay = time.monotonic() - start
blocked.join()
while freed() is not None:   # collected, whichever thread did it
    junk = [[i] for i in range(1000)]
print(delay)
"""


def commit_delay(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", STALL, mode], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_a_collection_on_the_committing_thread_stalls_it_for_the_busy_timeout():
    """The hazard is real (so the next test means something)."""
    assert commit_delay("inline") >= BUSY_TIMEOUT * 0.9


def test_collecting_in_a_thread_of_its_own_lets_the_commit_go_on():
    assert commit_delay("background") < BUSY_TIMEOUT / 2


def test_garbage_is_still_collected_in_the_background():
    script = """
import gc, threading
from nepi_prefect.orchestration import server_main
server_main.collect_in_background()
freed = threading.Event()
class Cycle:
    def __del__(self):
        print(threading.current_thread().name, gc.isenabled(), flush=True)
        freed.set()
garbage = Cycle(); garbage.me = garbage
del garbage
while not freed.wait(0.01):
    junk = [[i] for i in range(1000)]
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["nepi-gc", "False"], done.stderr


def test_full_collections_wait_their_turn():
    thresholds = (700, 10, 10)
    assert due((800, 11, 11), thresholds, full_allowed=True) == 2
    assert due((800, 11, 11), thresholds, full_allowed=False) == 1
    assert due((800, 3, 11), thresholds, full_allowed=False) == 0
    assert due((100, 3, 11), thresholds, full_allowed=False) is None

"""The timed dispatcher: a heap of tasks ordered by (time, arrival) and a worker pool.

This is where the fine-grained work of an experiment runs: RM actions, an RM
rescheduling itself while it waits for a neighbour (``ec.schedule("0.5s",
self.deploy)``), delayed condition actions. None of it waits on Prefect.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import traceback
from datetime import datetime
from typing import Any, Callable

from nepi_prefect.util.timefuncs import tnow

log = logging.getLogger("nepi_prefect.dispatcher")


class TaskStatus:
    NEW = 0
    DONE = 1
    ERROR = 2


class Task:
    """A callback due at ``timestamp``. ``result`` holds its return value, or the traceback."""

    __slots__ = ("id", "timestamp", "callback", "result", "status", "owner", "action", "done")

    def __init__(self, timestamp: datetime, callback: Callable[[], Any]):
        self.id: int | None = None
        self.timestamp = timestamp
        self.callback = callback
        self.result: Any = None
        self.status = TaskStatus.NEW
        self.owner: Any = None  # the resource manager the task acts for, if any
        self.action: str | None = None  # "release" marks a task that runs on a releasing RM
        self.done = threading.Event()

    def __repr__(self) -> str:
        return f"Task(id={self.id}, at={self.timestamp:%H:%M:%S.%f}, status={self.status})"


class HeapScheduler:
    """Tasks by (timestamp, arrival). Removal is lazy: a removed id is skipped on pop."""

    def __init__(self) -> None:
        self._queue: list[tuple[datetime, int, Task]] = []
        self._valid: set[int] = set()
        self._idgen = itertools.count(1)

    @property
    def pending(self) -> set[int]:
        return self._valid

    def schedule(self, task: Task) -> Task:
        if task.id is None:
            task.id = next(self._idgen)
        self._valid.add(task.id)
        heapq.heappush(self._queue, (task.timestamp, task.id, task))
        return task

    def remove(self, tid: int) -> None:
        self._valid.discard(tid)

    def peek(self) -> Task | None:
        """The earliest valid task, left in place."""
        while self._queue and self._queue[0][1] not in self._valid:
            heapq.heappop(self._queue)
        return self._queue[0][2] if self._queue else None

    def next(self) -> Task | None:
        """Pop the earliest valid task, whatever its time."""
        while self._queue:
            _, tid, task = heapq.heappop(self._queue)
            if tid in self._valid:
                self._valid.discard(tid)
                return task
        return None

    def __len__(self) -> int:
        return len(self._valid)


class WorkerPool:
    """Up to ``max_workers`` daemon threads, started as work arrives.

    Daemon threads (unlike ``concurrent.futures``) are still alive when
    ``atexit`` handlers run, so an experiment left without ``shutdown()``
    can still be released at interpreter exit.
    """

    def __init__(self, max_workers: int, name: str):
        if max_workers < 1:
            raise ValueError(f"a worker pool needs at least one thread, got {max_workers}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._max = max_workers
        self._name = name
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        if self._closed:
            raise RuntimeError("worker pool is closed")
        self._queue.put((fn, arg))
        if self._idle.acquire(blocking=False):
            return  # an idle worker will take it
        with self._lock:
            if len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, arg = item
            fn(arg)
            self._idle.release()

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)


class TimedDispatcher:
    """Runs each task of a :class:`HeapScheduler` on a thread pool when it is due.

    ``run_task(task)`` is the EC's hook that executes one task (failure
    attribution, state checks); the dispatcher only keeps time.
    """

    def __init__(self, run_task: Callable[[Task], None], nthreads: int = 50,
                 name: str = "nepi"):
        self._scheduler = HeapScheduler()
        self._cond = threading.Condition()
        self._run_task = run_task
        self._pool = WorkerPool(nthreads, name=f"{name}-worker")
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-dispatcher", daemon=True)
        self._thread.start()

    def schedule(self, task: Task) -> Task:
        with self._cond:
            if self._stopped:
                raise RuntimeError("the dispatcher is stopped; nothing more can be scheduled")
            self._scheduler.schedule(task)
            self._cond.notify()
        return task

    def remove(self, tid: int) -> None:
        with self._cond:
            self._scheduler.remove(tid)

    @property
    def pending(self) -> int:
        return len(self._scheduler)

    def _loop(self) -> None:
        while True:
            with self._cond:
                task = None
                while task is None:
                    if self._stopped:
                        return
                    head = self._scheduler.peek()
                    if head is None:
                        self._cond.wait()
                        continue
                    delay = (head.timestamp - tnow()).total_seconds()
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                    task = self._scheduler.next()
            try:
                self._pool.submit(self._guarded, task)
            except RuntimeError:  # pool closed under us: we are stopping
                return

    def _guarded(self, task: Task) -> None:
        try:
            self._run_task(task)
        except BaseException:  # the hook must never kill a worker silently
            log.error("dispatcher hook failed on %r:\n%s", task, traceback.format_exc())
        finally:
            task.done.set()

    def stop(self) -> None:
        """Stop taking tasks; pending ones are dropped, running ones finish on their own."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._pool.close()

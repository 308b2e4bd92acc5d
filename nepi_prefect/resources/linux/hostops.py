"""Batches of short remote steps, one command per host per phase.

Fan-out over many hosts is bound by round trips and remote process starts,
not by bandwidth. So the applications of a node do not each send their
``mkdir``, launch and kill: they queue a *step* (a snippet of shell) on the
node's :class:`HostBatcher`, and the batcher's thread sends every step queued
at that moment as ONE script, then hands each step its own output. While a
batch is on the wire the next one fills up (group commit), so 50 apps
deployed in the same dispatcher tick cost one round trip, not 50.

Steps must be short (no builds, no sleeps longer than a stop's grace): the
steps of a script run one after another in one remote shell. ``window``
bounds the steps of one script and ``workers`` the scripts in flight (each on
its own shell): the concurrency window per host, so 500 launches on one host
use more than one remote core.

A step may belong to a :class:`StepGroup`: the steps of a batch then all share
it, and the group says how their script runs (the launches run theirs in one
watcher process: see :mod:`.appcommands`). The batcher knows whether steps of
a group are queued or on the wire (:meth:`HostBatcher.pending`) and says when a
group drains (``on_drained``): the node's monitor holds its polls during a burst
of launches, which a poll would only slow down (see :mod:`.monitor`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable

from nepi_prefect.transport.base import Transport

#: seconds a batch waits for more steps after its latest one...
GATHER = 0.003
#: ...and at most this long after its first (a steady stream still goes out)
GATHER_MAX = 0.03
#: what a step's callback gets: (exit code, output) or (None, error text)
StepDone = Callable[[int | None, str], None]


@dataclass(frozen=True)
class StepGroup:
    """How the steps of one batch run together: ``wrap(script, tag)`` is the command
    that runs ``script`` (the batch's framed steps); ``tag`` is the batch's own random
    word (e.g. for an end line no step can print)."""

    wrap: Callable[[str, str], str]


@dataclass
class Step:
    """One snippet of shell and who wants its outcome."""

    script: str
    done: StepDone
    #: seconds this step may take; a batch may take the sum of its steps'
    timeout: float = 5.0
    #: a batch holds the steps of one group only (None: plain steps)
    group: StepGroup | None = None


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    rc: int | None = None
    out: str = ""

    def __call__(self, rc: int | None, out: str) -> None:
        self.rc, self.out = rc, out
        self.event.set()


class HostBatcher:
    """A thread per host that sends queued steps in batches over one transport."""

    def __init__(self, transport: Transport, name: str, window: int = 64, workers: int = 3,
                 on_drained: Callable[[StepGroup | None], None] | None = None):
        self.transport = transport
        self.window = max(1, window)
        self._on_drained = on_drained
        self._queue: list[Step] = []
        self._sending: dict[StepGroup | None, int] = {}  # batches on the wire, by group
        self._gathering = False  # a worker is gathering the next batch
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"nepi-batch-{name}-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, step: Step) -> None:
        """Queue ``step``; its ``done`` is called from the batcher's thread."""
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._queue.append(step)
                self._cond.notify()
        if closed:
            step.done(None, "the node's connection is closed")

    def pending(self, group: StepGroup | None) -> bool:
        """True while steps of ``group`` are queued or on the wire."""
        with self._cond:
            return self._pending(group)

    def _pending(self, group: StepGroup | None) -> bool:
        return bool(self._sending.get(group)) or any(s.group == group for s in self._queue)

    def run(self, script: str, timeout: float = 5.0) -> tuple[int | None, str]:
        """Queue ``script`` and wait until its batch ran: (exit code, output), or
        (None, error)."""
        waiter = _Waiter()
        self.submit(Step(script, waiter, timeout))
        waiter.event.wait()
        return waiter.rc, waiter.out

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                # one worker gathers at a time: two gathering together would split
                # one burst into two batches (each a watcher and a sed on the host)
                while (not self._queue or self._gathering) and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                self._gathering = True
                try:
                    self._gather()
                finally:
                    self._gathering = False
                    self._cond.notify_all()
                batch = self._take()
                if batch:
                    group = batch[0].group
                    self._sending[group] = self._sending.get(group, 0) + 1
            if batch:
                try:
                    self._send(batch)
                finally:
                    self._sent(group)

    def _sent(self, group: StepGroup | None) -> None:
        """A batch of ``group`` is back (its steps were told): tell ``on_drained`` if
        it was the group's last."""
        with self._cond:
            self._sending[group] -= 1
            drained = not self._pending(group)
        if drained and self._on_drained is not None:
            try:
                self._on_drained(group)
            except Exception:
                logging.getLogger(__name__).exception("on_drained raised")

    def _gather(self) -> None:
        """Wait (holding ``_cond``) while steps keep coming: the apps of a burst queue
        theirs a fraction of a ms apart, across all the hosts' apps, so the batch
        goes GATHER after the latest step (GATHER_MAX after the first at most)."""
        start = time.monotonic()
        end, cap = start + GATHER, start + GATHER_MAX
        while len(self._queue) < self.window and (left := end - time.monotonic()) > 0:
            count = len(self._queue)
            self._cond.wait(left)
            if len(self._queue) > count:
                end = min(cap, time.monotonic() + GATHER)

    def _take(self) -> list[Step]:
        """Up to ``window`` queued steps of the first one's group, in queue order."""
        if not self._queue:  # another worker took them while this one gathered
            return []
        group = self._queue[0].group
        batch, rest = [], []
        for step in self._queue:
            (batch if step.group == group and len(batch) < self.window else rest).append(step)
        self._queue = rest
        return batch

    def _send(self, batch: list[Step]) -> None:
        tag = os.urandom(4).hex()
        parts = []
        for i, step in enumerate(batch):
            # a brace group runs in the batch's shell: no process per step
            parts.append(f"printf '\\n@{tag}B{i}\\n'; {{ {step.script}\n}} </dev/null 2>&1; "
                         f"printf '\\n@{tag}E{i} %d\\n' $?")
        script = "\n".join(parts)
        group = batch[0].group
        if group is not None:
            script = group.wrap(script, tag)
        timeout = sum(step.timeout for step in batch)  # they run one after another
        try:
            result = self.transport.run(script, timeout=timeout)
        except Exception as exc:  # the host is gone: every step learns why
            for step in batch:
                _call(step, None, str(exc))
            return
        outcomes = _split(result.stdout, tag, len(batch))
        for step, (rc, out) in zip(batch, outcomes):
            _call(step, rc, out if rc is not None else (out or result.stderr.strip()[-500:]
                                                        or "the batch ended before this step"))


#: seconds a graceful kill waits after SIGTERM before SIGKILL (processes.kill_app)
KILL_GRACE = 3.0


def _split(text: str, tag: str, count: int) -> list[tuple[int | None, str]]:
    """Each step's (exit code, output) from a batch's framed stdout."""
    found: list[tuple[int | None, str]] = []
    pos = 0
    for i in range(count):
        begin, end = f"\n@{tag}B{i}\n", f"\n@{tag}E{i} "
        b = text.find(begin, pos)
        e = text.find(end, b + len(begin)) if b >= 0 else -1
        if e < 0:
            found.extend([(None, "")] * (count - i))
            break
        nl = text.find("\n", e + len(end))
        nl = len(text) if nl < 0 else nl
        try:
            rc: int | None = int(text[e + len(end):nl])
        except ValueError:
            rc = None
        found.append((rc, text[b + len(begin):e]))
        pos = nl
    return found


def _call(step: Step, rc: int | None, out: str) -> None:
    try:
        step.done(rc, out)
    except Exception:  # one step's callback must not starve the others
        logging.getLogger(__name__).exception("a batched step's callback raised")

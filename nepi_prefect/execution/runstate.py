"""The run-state file: ``run-state.json`` in the run directory, rewritten as the run goes.

It holds what a later process needs to find what this run left on its hosts
if the controller dies: the experiment and run ids, the controller's pid, the
description kept beside it, and every RM's guid, name, rtype, state (with its
times and failure), connections, attributes (never a secret one) and what the
RM reports through its public ``run_state()`` hook (a node its host and home,
an application its run directory). ``cleanup RUN`` and ``attach RUN``
(:mod:`.attach`) read it. Writes are atomic and at
most one per ``interval`` seconds (more apart if a write takes long), made by
one timer thread at a time; the final one is made at shutdown.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import STATE_TIME_ATTR, ResourceState2str
from nepi_prefect.util.files import atomic_file

FILE = "run-state.json"
#: the description a run keeps beside its results (``nepi_prefect.spec.run`` writes it)
DESCRIPTION_FILE = "experiment.yaml"


def run_state(exp_id: str, run_id: str, run_dir: str, ecstate: str,
              rms: Iterable[ResourceManager]) -> dict[str, Any]:
    """The run-state document for these RMs."""
    description = os.path.join(run_dir, DESCRIPTION_FILE)
    return {
        "exp_id": exp_id, "run_id": run_id, "pid": os.getpid(), "ecstate": ecstate,
        "updated": time.time(),
        "description": description if os.path.exists(description) else None,
        "resources": [resource_state(rm) for rm in sorted(rms, key=lambda r: r.guid)],
    }


def resource_state(rm: ResourceManager) -> dict[str, Any]:
    """One RM's entry: enough to register it again and take it up (``attach``)."""
    stamps = {ResourceState2str[s]: t.isoformat() for s, a in STATE_TIME_ATTR.items()
              if (t := getattr(rm, a, None)) is not None}
    return {"guid": rm.guid, "name": rm.name, "rtype": rm.get_rtype(),
            "state": ResourceState2str.get(rm.recorded_state, str(rm.recorded_state)),
            "times": stamps, "failure": rm.failure, "connections": sorted(rm.connections),
            "attributes": {k: v for k, v in rm.attribute_values().items()
                           if not rm.get_attribute(k).is_secret},
            **rm.run_state()}


class RunStateFile:
    """Keeps ``<run_dir>/run-state.json`` up to date; ``changed()`` is cheap to call.

    One timer thread at a time writes it: a change during a write marks the file
    dirty, and the write that ends reschedules itself (a change never starts a
    second writer that would queue behind the first: at 1000 RMs whose states
    change in bursts, those piled up by the hundred). The gap between writes is
    ``interval``, or ``COST_FACTOR`` times what the last write took if more, so
    the writer takes a bounded share of the CPU however many RMs there are.
    """

    #: the writer waits at least this many times its last write's duration
    COST_FACTOR = 4.0

    def __init__(self, run_dir: str, document: Callable[[], dict[str, Any]],
                 logger: logging.Logger, interval: float = 0.5):
        self.path = os.path.join(run_dir, FILE)
        self._document = document
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()  # the timer, dirty and closed flags; never held while writing
        self._writing = threading.Lock()  # one write at a time (the timer's, close's)
        self._last = 0.0  # when the last write started
        self._cost = 0.0  # how long it took
        self._timer: threading.Timer | None = None
        self._dirty = False
        self._closed = False
        self._warned = False

    def changed(self) -> None:
        """Something changed: the timer thread writes it soon (at most once per
        ``interval``), off the caller's path (RM actions call this on every state)."""
        self._dirty = True  # before the check: a write under way then writes again
        if self._timer is not None or self._closed:
            # A write is already due. Checked without the lock: every dispatcher thread
            # calls this, and queueing on the lock cost them more than the write itself.
            return
        with self._lock:
            if self._closed or self._timer is not None:
                return
            self._schedule()

    def _schedule(self) -> None:
        """Start the timer of the next write (the caller holds ``_lock``)."""
        gap = max(self._interval, self._cost * self.COST_FACTOR)
        wait = max(0.0, self._last + gap - time.monotonic())
        self._timer = threading.Timer(wait, self._timed)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """The final write (at shutdown); later changes are not written."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._closed = True
        self._write()

    def _timed(self) -> None:
        with self._lock:
            if self._closed:
                return
        self._write()
        with self._lock:  # changes made while it wrote: one more write, by a new timer
            self._timer = None
            if self._dirty and not self._closed:
                self._schedule()

    def _write(self) -> None:
        # Reading the RMs may change a state (an RM that notices its end when read),
        # which calls changed() again: so no lock of ours but the writer's is held.
        with self._writing:
            self._dirty = False
            self._last = time.monotonic()
            self._write_file()
            self._cost = time.monotonic() - self._last

    def _write_file(self) -> None:
        try:
            data = self._document()
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_file(self.path, "w") as out:
                json.dump(data, out, default=str)
        except OSError as exc:
            if not self._warned:  # once: a broken results directory is reported at shutdown
                self._warned = True
                self._logger.warning("could not write the run state %s: %s", self.path, exc)

"""The run-state file's writer: one at a time, however many changes come while it writes."""

from __future__ import annotations

import json
import logging
import threading
import time

from nepi_prefect.execution.runstate import RunStateFile
from tests.helpers import wait_until


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:  # not written yet
        return {}


def test_changes_during_a_slow_write_start_no_second_writer_and_are_written_after(tmp_path):
    version = [0]
    inside, release = threading.Event(), threading.Event()
    calls = []

    def document() -> dict:
        calls.append(version[0])
        if len(calls) == 1:  # the first write is slow: it lasts until the test says
            inside.set()
            release.wait(30)
        return {"v": version[0]}

    state = RunStateFile(str(tmp_path), document, logging.getLogger("test"), interval=0.01)
    state.changed()
    assert inside.wait(30)
    threads = threading.active_count()
    for i in range(200):  # a burst of state changes while the write is under way
        version[0] = i + 1
        state.changed()
    assert threading.active_count() <= threads, "a change started a writer behind the first"
    release.set()
    # the changes made during the slow write are written by the next one, not lost
    wait_until(lambda: _read(state.path).get("v") == 200, 30, "the last change was never written")
    assert len(calls) == 2
    state.close()
    assert _read(state.path)["v"] == 200


def test_the_gap_between_writes_grows_with_what_a_write_costs(tmp_path):
    state = RunStateFile(str(tmp_path), lambda: {}, logging.getLogger("test"), interval=0.01)
    state._cost = 0.5  # a write of a big run took half a second
    state._last = time.monotonic()
    with state._lock:
        state._schedule()
        timer = state._timer
    assert timer is not None and timer.interval >= 1.5  # at least COST_FACTOR x the cost
    state.close()

"""Run an experiment built from a description to its end.

The CLI and the Prefect flows share this: deploy, wait for the resources
that end the run, give up after the timeout, shut down, and return the
summary (with resource names added).
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import ResourceState2str
from nepi_prefect.spec.io import save_experiment, source_description
from nepi_prefect.util.timefuncs import parse_delay

#: progress callback: (ec, elapsed seconds) on every tick
Tick = Callable[[ExperimentController, float], None]


def wait_set(ec: ExperimentController) -> list[int]:
    """The guids whose end ends the run: the description's ``wait_for``, else every
    resource whose type finishes by itself (applications, not nodes, collectors
    or captures). Empty when nothing does: the run then ends once all started."""
    return ec.end_guids()


def state_counts(ec: ExperimentController) -> dict[str, int]:
    """How many RMs are in each state, in life-cycle order."""
    counts = collections.Counter(ec.state(g) for g in ec.resources)
    return {ResourceState2str[s]: counts[s] for s in sorted(counts)}


def run_experiment(ec: ExperimentController, timeout: float | str | None = None,
                   on_tick: Tick | None = None, tick: float = 0.25,
                   wait_guids: list[int] | None = None) -> dict[str, Any]:
    """Deploy ``ec``, wait for its end (or ``timeout``), shut it down; returns the summary.

    The description is kept next to the results as ``experiment.yaml``. A
    timeout fails the experiment. The summary's resources carry their ``name``.
    """
    desc = source_description(ec)
    if timeout is None and desc is not None and desc.timeout is not None:
        timeout = desc.timeout
    limit = parse_delay(timeout) if timeout is not None else None
    guids = wait_set(ec) if wait_guids is None else wait_guids
    try:
        save_experiment(ec, os.path.join(ec.run_dir, "experiment.yaml"))
        ec.deploy()
        _wait(ec, guids or ec.resources, limit, on_tick, tick, started_only=not guids)
    except BaseException as exc:
        # Ctrl-C or a crash: the experiment is over; release what was deployed.
        ec.abort(f"interrupted: {type(exc).__name__}: {exc}".rstrip(": "))
        raise
    finally:
        ec.shutdown()
    if on_tick:
        on_tick(ec, -1.0)
    return named_summary(ec)


def _wait(ec: ExperimentController, guids: list[int], limit: float | None,
          on_tick: Tick | None, tick: float, started_only: bool = False) -> None:
    wait = ec.wait_started if started_only else ec.wait_finished
    start = time.monotonic()
    while True:
        done = wait(guids, timeout=tick)
        elapsed = time.monotonic() - start
        if on_tick:
            on_tick(ec, elapsed)
        if done:
            return
        if limit is not None and elapsed > limit:
            ec.abort(f"timed out after {limit:g}s waiting for guids {guids}")
            return


def named_summary(ec: ExperimentController) -> dict[str, Any]:
    """``ec.summary()``: its resources carry their names (the description's)."""
    return ec.summary()


def ended_well(summary: dict[str, Any]) -> bool:
    """The experiment COMPLETED: no critical resource FAILED and it did not time out.

    A non-critical resource may have FAILED; the user said the run goes on without it.
    """
    return summary.get("state") == "COMPLETED"

"""The run's summary: what happened, RM by RM, kept as ``summary.json`` in the run directory."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, TextIO

from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import STATE_TIME_ATTR, ResourceState, ResourceState2str
from nepi_prefect.util.files import atomic_file

S = ResourceState
#: the furthest state wins, FAILED first
_OUTCOMES = (S.FAILED, S.FINISHED, S.STOPPED, S.STARTED, S.READY, S.PROVISIONED, S.DISCOVERED)


def outcome(rm: ResourceManager) -> str:
    """The furthest state an RM reached before release (FAILED wins)."""
    for state in _OUTCOMES:
        if getattr(rm, STATE_TIME_ATTR[state]) is not None:
            return ResourceState2str[state]
    return ResourceState2str[rm.recorded_state]


def resource_summary(rm: ResourceManager) -> dict[str, Any]:
    """One RM's guid, name, rtype, outcome, transition times, traces, metrics and failure."""
    stamps = {attr.lstrip("_"): getattr(rm, attr) for attr in STATE_TIME_ATTR.values()}
    return {
        "guid": rm.guid, "name": rm.name, "rtype": rm.get_rtype(), "state": outcome(rm),
        "times": {name: stamp.isoformat() if stamp else None for name, stamp in stamps.items()},
        "traces": dict(rm.collected), "metrics": rm.get_metrics(), "failure": rm.failure,
    }


def summary(exp_id: str, run_id: str, run_dir: str, failure: str | None,
            rms: Iterable[ResourceManager], lost: Iterable[str] = ()) -> dict[str, Any]:
    """What happened in one run, RM by RM (sorted by guid), and host by host.

    A run whose results were not all written (``lost``, and what each RM reports
    through ``lost_results()``) is INCOMPLETE, not COMPLETED, and says what was lost.
    """
    rms = sorted(rms, key=lambda r: r.guid)
    lost = list(lost) + [line for rm in rms for line in rm.lost_results()]
    data = {"exp_id": exp_id, "run_id": run_id,
            "state": "FAILED" if failure else "INCOMPLETE" if lost else "COMPLETED",
            "failure": failure, "run_dir": run_dir,
            "resources": [resource_summary(rm) for rm in rms]}
    if lost:
        data["lost"] = lost
    hosts = [report for rm in rms if (report := rm.host_report()) is not None]
    if hosts:  # which hosts did their part and which failed, and why
        data["hosts"] = hosts
    return data


def write_summary(run_dir: str, data: dict[str, Any], logger: logging.Logger) -> str | None:
    """Keep ``summary.json`` in ``run_dir`` (``nepi-prefect results`` reads it).

    Written under a temporary name and renamed, so a reader never sees half a
    file and a failed write leaves the previous one. Returns None, or what was lost.
    """
    try:
        os.makedirs(run_dir, exist_ok=True)
        with atomic_file(os.path.join(run_dir, "summary.json"), "w") as out:
            write_json(out, data)
    except OSError as exc:
        logger.error("could not write the run summary in %s: %s", run_dir, exc)
        return f"summary.json: {exc}"
    return None


def write_json(out: TextIO, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, one line per resource, a line at a time.

    Indented JSON goes through the json module's pure-Python encoder, which
    took most of a 1000-RM shutdown; a compact line per resource keeps the file
    readable and uses the C encoder.
    """
    head = json.dumps({k: v for k, v in data.items() if k != "resources"}, indent=2, default=str)
    out.write(head[:-2] + ",\n" if len(head) > 2 else "{\n")
    out.write('  "resources": [')
    for i, row in enumerate(data.get("resources", ())):
        out.write(("," if i else "") + "\n    " + json.dumps(row, default=str))
    out.write("\n  ]\n}\n" if data.get("resources") else "]\n}\n")

"""The flow run's summary artifact: one row per RM."""

from __future__ import annotations

import json
from typing import Any, Callable

ARTIFACT_KEY = "nepi-summary"
#: the transitions shown, in life-cycle order
TIMES = ("discover", "provision", "ready", "start", "stop", "finish", "failed", "release")


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every RM: rtype, guid, final state, the time of each transition, its traces."""
    rows = []
    for res in summary.get("resources", []):
        times = res.get("times", {})
        row: dict[str, Any] = {"guid": res["guid"], "rtype": res["rtype"], "state": res["state"]}
        for name in TIMES:
            row[f"{name}_time"] = times.get(f"{name}_time")
        row["traces"] = ", ".join(f"{k}: {v}" for k, v in sorted(res.get("traces", {}).items()))
        row["metrics"] = ", ".join(f"{k}={v}" for k, v in sorted(res.get("metrics", {}).items()))
        row["failure"] = res.get("failure") or ""
        rows.append(row)
    return rows


def summary_artifact(summary: dict[str, Any],
                     redact: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The ``ArtifactCreate`` fields of the table artifact (``key="nepi-summary"``)."""
    data = json.dumps(summary_rows(summary), default=str)
    description = (f"nepi-prefect experiment {summary.get('exp_id')} run {summary.get('run_id')}: "
                   f"{summary.get('state')}. Results in {summary.get('run_dir')}")
    if summary.get("failure"):
        description += f"\n\nFailure: {summary['failure']}"
    if redact is not None:
        # The engine redacts its logs; the summary is built from raw state, so redact it too.
        data, description = redact(data), redact(description)
    return {"key": ARTIFACT_KEY, "type": "table", "data": data, "description": description}

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
    if summary.get("manifest"):
        description += "\n\n" + manifest_markdown(summary["manifest"])
    if redact is not None:
        # The engine redacts its logs; the summary is built from raw state, so redact it too.
        data, description = redact(data), redact(description)
    return {"key": ARTIFACT_KEY, "type": "table", "data": data, "description": description}


def manifest_markdown(manifest: dict[str, Any]) -> str:
    """The run's environment in a few markdown lines: controller, then each host."""
    ctl = manifest.get("controller", {})
    desc = ctl.get("description") or {}
    lines = ["**Environment** (full manifest: `manifest.json` in the results)", "",
             f"- controller {ctl.get('hostname')}: {ctl.get('distribution')}, kernel "
             f"{ctl.get('kernel')}, Python {ctl.get('python')}, nepi-prefect "
             f"{ctl.get('nepi_prefect')}, Prefect {ctl.get('prefect')}; description sha256 "
             f"`{(desc.get('sha256') or '-')[:12]}`"]
    for guid, res in sorted(manifest.get("resources", {}).items()):
        facts = res.get("facts", {})
        if "kernel" not in facts:
            continue
        tools = ", ".join(f"{k} {_version(v)}" for k, v in sorted(facts.get("tools", {}).items()) if v)
        sysctl = facts.get("sysctl", {})
        lines.append(f"- {res.get('rtype')} {guid} ({facts.get('hostname')}): "
                     f"{facts.get('distribution')}, kernel {facts.get('kernel')}, "
                     f"{facts.get('cpu', {}).get('count')} CPUs, "
                     f"cc {sysctl.get('net.ipv4.tcp_congestion_control')}, "
                     f"qdisc {sysctl.get('net.core.default_qdisc')}, "
                     f"clock sync {facts.get('clock', {}).get('synchronized')}; {tools}")
    return "\n".join(lines)


def _version(text: str) -> str:
    """The version-looking word of a tool's version line."""
    words = [w.strip(",()") for w in text.split()]
    return next((w for w in words if any(c.isdigit() for c in w) and "." in w),
                words[-1] if words else "")

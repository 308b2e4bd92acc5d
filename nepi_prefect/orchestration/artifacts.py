"""The flow run's artifacts: a summary table (one row per RM) and a markdown report."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Callable

ARTIFACT_KEY = "nepi-summary"      # + "-<experiment>": each experiment its own history
REPORT_KEY = "nepi-report"
#: the transitions shown, in life-cycle order
TIMES = ("discover", "provision", "ready", "start", "stop", "finish", "failed", "release")
#: those the report's timeline shows (READY ends the deploy; the table fits a page)
TIMELINE = TIMES[2:]


def artifact_key(prefix: str, exp_id: str | None) -> str:
    """``<prefix>-<experiment>`` as Prefect accepts a key (lowercase letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", (exp_id or "").lower()).strip("-")
    return f"{prefix}-{slug}" if slug else prefix


def _times(res: dict[str, Any]) -> dict[str, datetime]:
    found = {}
    for name in TIMES:
        stamp = (res.get("times") or {}).get(f"{name}_time")
        if stamp:
            found[name] = datetime.fromisoformat(stamp)
    return found


def duration(res: dict[str, Any]) -> float | None:
    """Seconds from its start to its stop, finish or failure (None if it never ran)."""
    times = _times(res)
    end = next((times[k] for k in ("failed", "finish", "stop") if k in times), None)
    if "start" not in times or end is None:
        return None
    return round((end - times["start"]).total_seconds(), 3)


def _number(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every RM: name, rtype, guid, final state, duration, each metric its own (numeric)
    column, its failure and its traces."""
    resources = summary.get("resources", [])
    metrics = sorted({k for res in resources for k in (res.get("metrics") or {})})
    rows = []
    for res in resources:
        row: dict[str, Any] = {"name": res.get("name") or f"{res['rtype']}-{res['guid']}",
                               "rtype": res["rtype"], "guid": res["guid"], "state": res["state"],
                               "duration_s": duration(res)}
        values = res.get("metrics") or {}
        row.update({k: _number(values[k]) if k in values else None for k in metrics})
        row["failure"] = res.get("failure") or ""
        row["traces"] = ", ".join(f"{k}: {v}" for k, v in sorted(res.get("traces", {}).items()))
        rows.append(row)
    return rows


def failed_lines(summary: dict[str, Any]) -> list[str]:
    """Each FAILED resource by name, with its reason."""
    return [f"{res.get('name') or res['rtype']} ({res['rtype']} {res['guid']}) FAILED"
            + (f": {res['failure']}" if res.get("failure") else "")
            for res in summary.get("resources", []) if res.get("state") == "FAILED"]


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """Why the run failed: each FAILED resource by name with its reason, then the
    experiment's failure unless it only repeats one of those reasons."""
    lines = failed_lines(summary)
    why = summary.get("failure")
    reasons = [res["failure"] for res in summary.get("resources", [])
               if res.get("state") == "FAILED" and res.get("failure")]
    if why and not any(reason in why for reason in reasons):
        lines.append(why)
    return lines


def failed_resources(summary: dict[str, Any]) -> str:
    """The FAILED resources by name, with their reasons ("" if none)."""
    return "; ".join(failed_lines(summary))


def host_lines(summary: dict[str, Any]) -> list[str]:
    """Per-host accounting (``summary["hosts"]``): how many did their part, then each
    failed host with its reason (unreachable, auth, lost, command failed ...)."""
    hosts = summary.get("hosts") or []
    if not hosts:
        return []
    bad = [h for h in hosts if not h.get("ok")]
    return [f"hosts: {len(hosts) - len(bad)} ok, {len(bad)} failed"] + [
        f"host {h.get('host')} (guid {h.get('guid')}) failed: {h.get('reason')}: "
        f"{h.get('detail')}" for h in bad]


def closing_artifacts(summary: dict[str, Any],
                      redact: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """The summary table and the markdown report, secrets masked."""
    return [summary_artifact(summary, redact), report_artifact(summary, redact)]


def summary_artifact(summary: dict[str, Any],
                     redact: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The ``ArtifactCreate`` fields of the table artifact (``nepi-summary-<experiment>``)."""
    data = json.dumps(summary_rows(summary), default=str)
    description = (f"nepi-prefect experiment {summary.get('exp_id')} run {summary.get('run_id')}: "
                   f"{summary.get('state')}. Results in {summary.get('run_dir')}")
    if summary.get("failure"):
        description += f"\n\nFailure: {failed_resources(summary) or summary['failure']}"
    if host_lines(summary):
        description += "\n\n" + "\n".join(f"- {line}" for line in host_lines(summary))
    if summary.get("manifest"):
        description += "\n\n" + manifest_markdown(summary["manifest"])
    if redact is not None:
        # The engine redacts its logs; the summary is built from raw state, so redact it too.
        data, description = redact(data), redact(description)
    return {"key": artifact_key(ARTIFACT_KEY, summary.get("exp_id")), "type": "table",
            "data": data, "description": description}


def report_artifact(summary: dict[str, Any],
                    redact: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The ``ArtifactCreate`` fields of the markdown report (``nepi-report-<experiment>``)."""
    text = report_markdown(summary)
    return {"key": artifact_key(REPORT_KEY, summary.get("exp_id")), "type": "markdown",
            "data": redact(text) if redact is not None else text,
            "description": f"nepi-prefect report of {summary.get('exp_id')} run "
                           f"{summary.get('run_id')}"}


def report_markdown(summary: dict[str, Any]) -> str:
    """The verdict, each resource's timeline, the metrics, the failure, where the traces are."""
    resources = summary.get("resources", [])
    verdict = summary.get("state") or "UNKNOWN"
    lines = [f"# {summary.get('exp_id')} run {summary.get('run_id')}: **{verdict}**", ""]
    reasons = failure_lines(summary)
    if reasons:
        lines += ["## Failure", "", *(f"- {line}" for line in reasons), ""]
    if host_lines(summary):
        lines += ["## Hosts", "", *(f"- {line}" for line in host_lines(summary)), ""]
    if summary.get("lost"):
        lines += ["## Results lost", ""] + [f"- {item}" for item in summary["lost"]] + [""]
    lines += _timeline(resources)
    lines += _metrics_table(resources)
    lines += ["## Traces", "", f"Results directory: `{summary.get('run_dir')}`", ""]
    lines += [f"- {res.get('name')}: {name} `{path}`" for res in resources
              for name, path in sorted((res.get("traces") or {}).items())] or ["- none collected"]
    return "\n".join(lines)


def _timeline(resources: list[dict[str, Any]]) -> list[str]:
    """Seconds from the first transition of the run to each RM's transitions."""
    stamps = {res["guid"]: _times(res) for res in resources}
    origin = min((t for times in stamps.values() for t in times.values()), default=None)
    lines = ["## Timeline", "", "seconds since the run's first transition", "",
             "| resource | rtype | state | " + " | ".join(TIMELINE) + " |",
             "|---|---|---|" + "---:|" * len(TIMELINE)]
    for res in resources:
        times = stamps[res["guid"]]
        cells = [f"{(times[k] - origin).total_seconds():.2f}" if k in times else ""
                 for k in TIMELINE]
        lines.append(f"| {res.get('name')} | {res['rtype']} | {res['state']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _metrics_table(resources: list[dict[str, Any]]) -> list[str]:
    measured = [res for res in resources if res.get("metrics")]
    if not measured:
        return ["## Metrics", "", "none measured", ""]
    lines = ["## Metrics", "", "| resource | metric | value |", "|---|---|---:|"]
    lines += [f"| {res.get('name')} | {name} | {value} |" for res in measured
              for name, value in sorted(res["metrics"].items())]
    return lines + [""]


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

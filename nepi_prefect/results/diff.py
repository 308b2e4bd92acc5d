"""What differs between two recorded runs: description, attribute values, environment, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rich.console import Group
from rich.table import Table
from rich.text import Text

from nepi_prefect.results.manifest import differences, flatten, load_manifest
from nepi_prefect.results.query import (
    load_description_data,
    named_summary,
    parameters,
    resource_names,
)
from nepi_prefect.results.tables import flat_metrics

SECTIONS = ("description", "attributes", "environment", "metrics")


def _structure(desc: Mapping[str, Any] | None) -> dict[str, Any]:
    """A description without its attribute values, flattened (those are compared apart)."""
    if desc is None:
        return {}
    flat: dict[str, Any] = {k: desc.get(k) for k in ("name", "wait_for", "timeout")
                            if desc.get(k) is not None}
    for res in desc.get("resources", []):
        name = res.get("name")
        flat[f"resources.{name}.rtype"] = res.get("rtype")
        for key in ("traces", "collect"):
            if res.get(key):
                flat[f"resources.{name}.{key}"] = ", ".join(map(str, res[key]))
    flat["connections"] = "; ".join(sorted("-".join(map(str, c)) for c in desc.get("connections", [])))
    for i, cond in enumerate(desc.get("conditions", []) or []):
        flat[f"conditions[{i}]"] = (f"{','.join(cond.get('resources', []))} {cond.get('action')} "
                                    f"after {','.join(cond.get('wait_for', []))} "
                                    f"{cond.get('state')} +{cond.get('time') or 0}")
    return flat


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "a": a.get(k), "b": b.get(k)}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _metric_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = _changed(a, b)
    for row in rows:
        if isinstance(row["a"], (int, float)) and isinstance(row["b"], (int, float)):
            row["delta"] = row["b"] - row["a"]
            if row["a"]:
                row["relative"] = row["delta"] / abs(row["a"])
    return rows


def diff_runs(run_a: str | Path, run_b: str | Path, all_environment: bool = False) -> dict[str, Any]:
    """Differences between the runs in two run directories.

    ``{"a": {...}, "b": {...}, "description": [...], "attributes": [...],
    "environment": [...], "metrics": [...]}``; each list holds ``{"key", "a", "b"}``
    rows (environment rows say if the difference is ``significant``, metric rows
    carry ``delta`` and ``relative``). Environment differences are limited to
    what matters for a measurement unless ``all_environment``.
    """
    sa, sb = named_summary(run_a), named_summary(run_b)
    da, db = load_description_data(run_a), load_description_data(run_b)
    ma, mb = load_manifest(str(run_a)), load_manifest(str(run_b))
    env: list[dict[str, Any]] = []
    if ma is not None and mb is not None:
        env = differences(flatten(ma, resource_names(sa, da)), flatten(mb, resource_names(sb, db)),
                          significant_only=not all_environment)
    return {
        "a": _identity(sa), "b": _identity(sb),
        "description": _changed(_structure(da), _structure(db)),
        "attributes": _changed(parameters(da), parameters(db)),
        "environment": env,
        "metrics": _metric_rows(flat_metrics(sa), flat_metrics(sb)),
        "missing": [f"{side}: {what}" for side, d, m in (("a", da, ma), ("b", db, mb))
                    for what, x in (("description", d), ("manifest", m)) if x is None],
    }


def _identity(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("exp_id", "run_id", "state", "run_dir", "rerun_of")}


def render_diff(diff: Mapping[str, Any]) -> Group:
    """The diff as rich tables, one per section that has differences."""
    a, b = diff["a"], diff["b"]
    parts: list[Any] = [Text(f"A: {a['exp_id']}/{a['run_id']} ({a['state']})  {a['run_dir']}\n"
                             f"B: {b['exp_id']}/{b['run_id']} ({b['state']})  {b['run_dir']}")]
    for note in diff.get("missing", []):
        parts.append(Text(f"no saved {note.split(': ')[1]} for run {note.split(':')[0].upper()}: "
                          "not compared", style="yellow"))
    for section in SECTIONS:
        rows = diff[section]
        if not rows:
            parts.append(Text(f"{section}: same", style="green"))
            continue
        table = Table(title=f"{section}: {len(rows)} difference{'s' if len(rows) > 1 else ''}",
                      title_justify="left")
        for col in ("key", "A", "B") + (("change",) if section == "metrics" else ()):
            table.add_column(col, overflow="fold")
        for row in rows:
            extra = ()
            if section == "metrics":
                extra = (_change(row),)
            style = "bold" if row.get("significant") else None
            table.add_row(row["key"], _show(row["a"]), _show(row["b"]), *extra, style=style)
        parts.append(table)
    return Group(*parts)


def _show(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _change(row: Mapping[str, Any]) -> str:
    if "delta" not in row:
        return ""
    rel = f" ({row['relative']:+.1%})" if "relative" in row else ""
    return f"{row['delta']:+g}{rel}"

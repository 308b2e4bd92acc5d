"""Recorded runs as a table: find them, filter them, export them.

Each run directory (``<root>/<exp_id>/<run_id>/``) holds ``summary.json``,
the description the run was built from (``experiment.yaml``, or
``experiment.json`` for a run driven through the Python API) and
``manifest.json``. :func:`runs_frame` gives one row per run: its identity
and outcome, one column per parameter (``NAME.ATTR``, every attribute the
description sets) and one per metric (``<resource>.<metric>``). The frame's
``attrs["parameters"]`` and ``attrs["metrics"]`` name those columns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from nepi_prefect import settings
from nepi_prefect.execution.environment import description_path
from nepi_prefect.results.manifest import campaign_warnings, load_manifest
from nepi_prefect.results.tables import flat_metrics
from nepi_prefect.util.timefuncs import parse_delay

SUMMARY_FILE = "summary.json"
#: the columns every runs frame starts with
BASE_COLUMNS = ("exp_id", "run_id", "time", "state", "campaign", "rerun_of", "failure", "run_dir")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RunNotFound(LookupError):
    """A run reference that names no recorded run."""


def run_dirs(root: str | None = None, experiment: str | None = None) -> list[Path]:
    """Every run directory under the results root (of ``experiment`` only), sorted."""
    base = Path(settings.results_root(root))
    pattern = f"{experiment}/*/{SUMMARY_FILE}" if experiment else f"*/*/{SUMMARY_FILE}"
    return sorted(p.parent for p in base.glob(pattern))


def find_run(ref: str, root: str | None = None) -> Path:
    """The directory of the run ``ref`` names: a run directory, ``EXP_ID/RUN_ID``,
    a run id, or an experiment id (its latest run)."""
    path = Path(ref).expanduser()
    if (path / SUMMARY_FILE).is_file():
        return path.resolve()
    base = Path(settings.results_root(root))
    if (base / ref / SUMMARY_FILE).is_file():
        return base / ref
    matches = [d for d in run_dirs(root) if d.name == ref]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunNotFound(f"run id {ref!r} is ambiguous under {base}: give EXP_ID/RUN_ID, one of "
                          + ", ".join(f"{d.parent.name}/{d.name}" for d in matches))
    latest = run_dirs(root, ref) if "/" not in ref else []
    if latest:
        return latest[-1]
    raise RunNotFound(f"no run {ref!r} under {base}: expected a run directory, EXP_ID/RUN_ID, "
                      f"a run id or an experiment id (see `nepi-prefect results`)")


def load_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``summary.json`` (with ``run_dir`` set to where it was found)."""
    summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    summary["run_dir"] = str(run_dir)
    return summary


def named_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's summary with each resource's description name (``summary.json``
    as the EC writes it knows guids only)."""
    summary = load_summary(run_dir)
    try:
        desc = load_description_data(run_dir)
    except (OSError, ValueError, yaml.YAMLError):
        desc = None
    names = resource_names(summary, desc)
    for res in summary.get("resources", []):
        if not res.get("name"):
            res["name"] = names.get(str(res.get("guid")), str(res.get("guid")))
    return summary


def load_description_data(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's saved description as plain data, or None if it saved none."""
    path = description_path(str(run_dir))
    if path is None:
        return None
    with open(path) as fh:
        data = json.load(fh) if path.endswith(".json") else yaml.load(fh, Loader=_Loader)
    return data if isinstance(data, dict) else None


def parameters(description: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"NAME.ATTR": value}`` for every attribute a description sets; a credential
    saved as ``{"env": VAR}`` shows as ``$VAR``."""
    found: dict[str, Any] = {}
    for res in (description or {}).get("resources", []):
        for attr, value in (res.get("attributes") or {}).items():
            if isinstance(value, dict) and set(value) == {"env"}:
                value = f"${value['env']}"
            found[f"{res.get('name')}.{attr}"] = value
    return found


def resource_names(summary: Mapping[str, Any], description: Mapping[str, Any] | None) -> dict[str, str]:
    """guid (as a string) -> resource name, from the summary or the description."""
    names = {str(r.get("guid")): r["name"] for r in (description or {}).get("resources", [])
             if r.get("guid") is not None and r.get("name")}
    names.update({str(r["guid"]): r["name"] for r in summary.get("resources", []) if r.get("name")})
    return names


def run_time(summary: Mapping[str, Any], run_dir: Path) -> dt.datetime:
    """When the run began: its run id when that is a timestamp, else the summary's mtime."""
    try:
        return dt.datetime.strptime(str(summary.get("run_id"))[:20], "%Y%m%d%H%M%S%f")
    except ValueError:
        return dt.datetime.fromtimestamp((run_dir / SUMMARY_FILE).stat().st_mtime)


def run_row(run_dir: Path) -> dict[str, Any] | None:
    """One run as a flat dict: base columns, then ``params`` and ``metrics`` sub-dicts."""
    try:
        summary = named_summary(run_dir)
        desc = load_description_data(run_dir)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    row = {"exp_id": summary.get("exp_id"), "run_id": summary.get("run_id"),
           "time": run_time(summary, run_dir), "state": summary.get("state"),
           "campaign": summary.get("campaign"), "rerun_of": summary.get("rerun_of"),
           "failure": summary.get("failure"), "run_dir": str(run_dir)}
    return {**row, "params": parameters(desc), "metrics": flat_metrics(summary)}


def parse_when(text: str | dt.datetime | None) -> dt.datetime | None:
    """A point in time: a datetime, an ISO date/time, or a delay back from now ("2h", "30m")."""
    if text is None or isinstance(text, dt.datetime):
        return text
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return dt.datetime.now() - dt.timedelta(seconds=parse_delay(text))
    except ValueError:
        raise ValueError(f"{text!r}: expected an ISO date/time (2026-11-23T02:00) "
                         f"or a delay back from now (30m, 2h, 1d)") from None


def parse_where(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """``["ping.count=5", ...]`` -> ``{"ping.count": "5"}``; ValueError names the bad item."""
    if isinstance(items, Mapping):
        return {k: str(v) for k, v in items.items()}
    found = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"{item!r}: expected NAME.ATTR=VALUE, e.g. ping.count=5")
        found[key.strip()] = value.strip()
    return found


def _matches(value: Any, wanted: str) -> bool:
    if value is None:
        return False
    if str(value) == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value).lower() == wanted.lower()


def runs_frame(root: str | None = None, experiment: str | None = None,
               campaign: str | None = None, state: str | None = None,
               since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
               where: Iterable[str] | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Recorded runs, one row each, filtered; see the module docstring for the columns.

    ``where`` keeps runs whose parameter ``NAME.ATTR`` equals the value (numbers
    compare as numbers). ``since``/``until`` take ISO times or delays back from now.
    """
    start, end, wanted = parse_when(since), parse_when(until), parse_where(where)
    rows = []
    for run_dir in run_dirs(root, experiment):
        row = run_row(run_dir)
        if row is None or (state and str(row["state"]).upper() != state.upper()) \
                or (campaign and row["campaign"] != campaign) \
                or (start and row["time"] < start) or (end and row["time"] > end) \
                or any(not _matches(row["params"].get(k), v) for k, v in wanted.items()):
            continue
        rows.append(row)
    return rows_frame(rows)


def frame_of(run_dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The runs frame of these run directories (e.g. a sweep's), unreadable ones skipped."""
    rows = [run_row(Path(d)) for d in run_dirs if d]
    return rows_frame([r for r in rows if r is not None])


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame from :func:`run_row` dicts: base, parameter and metric columns."""
    params = sorted({k for r in rows for k in r["params"]})
    metrics = sorted({k for r in rows for k in r["metrics"]})
    records = [{**{c: r[c] for c in BASE_COLUMNS}, **r["params"], **r["metrics"]} for r in rows]
    frame = pd.DataFrame.from_records(records, columns=[*BASE_COLUMNS, *params, *metrics])
    for col in metrics:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame = frame.sort_values(["time", "exp_id"], kind="stable").reset_index(drop=True)
    frame.attrs["parameters"], frame.attrs["metrics"] = params, metrics
    return frame


def annotate_run(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` to a run's ``summary.json`` (e.g. ``rerun_of``); the new summary."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = json.loads(path.read_text())
    summary.update(fields)
    path.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def environment_warnings(frame: pd.DataFrame) -> list[str]:
    """:func:`~nepi_prefect.results.manifest.campaign_warnings` over a frame's runs:
    what differs, in what matters, between the environments they ran in."""
    runs = []
    for run_dir in frame.get("run_dir", []):
        if not isinstance(run_dir, str) or not run_dir:  # a run that never started
            continue
        manifest = load_manifest(run_dir)
        if manifest is not None:
            try:
                summary, desc = load_summary(run_dir), load_description_data(run_dir)
            except (OSError, ValueError, yaml.YAMLError):
                continue
            runs.append((f"{summary.get('exp_id')}/{summary.get('run_id')}", manifest,
                         resource_names(summary, desc)))
    return campaign_warnings(runs)

"""A campaign's table: one row per run (point x repetition), its per-point aggregate,
and the CSV and Parquet files written beside the store.

``campaign_frame`` and ``list_campaigns`` are the read side other modules use
(the plot and query commands); the sweep flows write through
:class:`~nepi_prefect.results.store.CampaignStore`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from nepi_prefect.results.store import DB_NAME, STATES, CampaignStore, campaign_dir, campaigns_root
from nepi_prefect.results.tables import ci95

#: the columns every campaign frame starts with, in this order
BASE_COLUMNS = ["campaign", "point", "rep", "state", "exp_id", "run_id", "run_dir", "flow_run_id"]
#: bookkeeping columns after the parameters and metrics
EXTRA_COLUMNS = ["attempt", "worker", "error", "started", "ended"]


def _frame(store: CampaignStore) -> pd.DataFrame:
    runs = store.runs()
    params = list(dict.fromkeys(k for r in runs for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in runs for k, v in r["metrics"].items() if _numeric(v)))
    records = []
    for r in runs:
        rec: dict[str, Any] = {"campaign": store.name, "point": r["point"], "rep": r["rep"],
                               "state": r["state"], "exp_id": r["exp_id"], "run_id": r["run_id"],
                               "run_dir": r["run_dir"], "flow_run_id": r["flow_run_id"]}
        rec.update({p: r["params"].get(p) for p in params})
        rec.update({m: _number(r["metrics"].get(m)) for m in metrics})
        rec.update({c: r.get(c) for c in EXTRA_COLUMNS})
        records.append(rec)
    columns = BASE_COLUMNS + params + metrics + EXTRA_COLUMNS
    frame = pd.DataFrame.from_records(records, columns=columns)
    for m in metrics:
        frame[m] = pd.to_numeric(frame[m], errors="coerce").astype("float64")
    frame["rep"] = frame["rep"].astype("int64")
    frame.attrs.update(campaign=store.name, parameters=params, metrics=metrics)
    return frame


def campaign_frame(name: str, root: str | None = None) -> pd.DataFrame:
    """One row per run of campaign ``name``: ``campaign, point, rep, state, exp_id, run_id,
    run_dir, flow_run_id``, one column per swept ``NAME.ATTR`` (typed values), one float
    column per metric ``<resource>.<metric>``, then ``attempt, worker, error, started, ended``.

    ``frame.attrs`` holds ``parameters`` and ``metrics`` (the column names of each kind),
    as in :func:`nepi_prefect.results.query.runs_frame`.
    FileNotFoundError if there is no such campaign.
    """
    store = CampaignStore.open(name, root, create=False)
    try:
        return _frame(store)
    finally:
        store.close()


def list_campaigns(root: str | None = None) -> list[dict[str, Any]]:
    """Every campaign under the results root: ``name, done, failed, todo, running, total,
    points, experiment, path``, by name."""
    found = []
    base = campaigns_root(root)
    for db in sorted(base.glob(f"*/{DB_NAME}")) if base.is_dir() else []:
        store = CampaignStore(db, db.parent.name)
        try:
            counts = store.counts()
            meta = store.meta()
            points = len(store.points())
        finally:
            store.close()
        found.append({"name": store.name, **counts, "total": sum(counts.values()),
                      "points": points, "experiment": meta.get("experiment"),
                      "path": str(db.parent)})
    return found


def point_stats(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per point: the parameters, ``runs``, ``done``, ``failed``, and for each metric
    ``<metric>.mean``, ``<metric>.ci95`` (half-width, NEPI's normal rule) and ``<metric>.n``
    over the runs that finished."""
    params = frame.attrs.get("parameters") or []
    metrics = metrics if metrics is not None else (frame.attrs.get("metrics") or [])
    rows = []
    for point, group in frame.groupby("point", sort=False):
        row: dict[str, Any] = {"point": point}
        row.update({p: group[p].iloc[0] for p in params})
        row.update(runs=len(group), done=int((group["state"] == "done").sum()),
                   failed=int((group["state"] == "failed").sum()))
        done = group[group["state"] == "done"]
        for m in metrics:
            samples = [float(v) for v in done[m] if not pd.isna(v)]
            half = ci95(samples)
            row[f"{m}.mean"] = sum(samples) / len(samples) if samples else math.nan
            row[f"{m}.ci95"] = math.nan if math.isinf(half) else half
            row[f"{m}.n"] = len(samples)
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(name: str, root: str | None = None,
                 frame: pd.DataFrame | None = None) -> dict[str, str]:
    """Write ``runs.csv``, ``runs.parquet`` and ``points.csv`` in the campaign's directory
    (atomically: a reader never sees half a file); returns their paths."""
    frame = campaign_frame(name, root) if frame is None else frame
    directory = campaign_dir(name, root)
    paths = {"csv": directory / "runs.csv", "parquet": directory / "runs.parquet",
             "points_csv": directory / "points.csv"}
    _atomic(paths["csv"], lambda p: frame.to_csv(p, index=False))
    _atomic(paths["parquet"], lambda p: _parquet_safe(frame).to_parquet(p, index=False))
    _atomic(paths["points_csv"], lambda p: point_stats(frame).to_csv(p, index=False))
    return {k: str(v) for k, v in paths.items()}


def progress(name: str, root: str | None = None) -> dict[str, int]:
    """Runs per state of campaign ``name``."""
    store = CampaignStore.open(name, root, create=False)
    try:
        return store.counts()
    finally:
        store.close()


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet wants one type per column: a parameter swept over mixed types becomes text."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and not pd.isna(v)}
            if len(kinds) > 1:
                out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    return float(value) if _numeric(value) else None


__all__ = ["BASE_COLUMNS", "STATES", "campaign_frame", "list_campaigns", "point_stats",
           "progress", "write_tables"]

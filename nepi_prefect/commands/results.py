"""``nepi-prefect results``, ``diff``, ``rerun`` and ``plot``: reading recorded runs.

``cli.py`` registers these commands (:func:`register`); their bodies are here.
Bad input raises :class:`InvalidInputError` (exit code 2 with the message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from rich.console import Console
from rich.table import Table

from nepi_prefect import settings
from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.results.campaign import campaign_frame
from nepi_prefect.results.diff import diff_runs, render_diff
from nepi_prefect.results.query import (
    RunNotFound,
    annotate_run,
    environment_warnings,
    find_run,
    named_summary,
    runs_frame,
)
from nepi_prefect.results.tables import artifact_key

EXIT_OK, EXIT_FAILED = 0, 1
FORMATS = ("table", "json", "csv", "parquet")
#: run a description: (desc, source, args, extra summary fields) -> exit code
RunDescription = Callable[[Any, str, argparse.Namespace, dict], int]


def _consoles() -> tuple[Console, Console]:
    """Consoles for this call; piped output is wide enough to grep."""
    return (Console(width=None if sys.stdout.isatty() else 200),
            Console(stderr=True, width=None if sys.stderr.isatty() else 200))


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per resource: name, type, outcome, metrics, collected traces."""
    table = Table(title=f"{summary['exp_id']} / {summary['run_id']}: {summary['state']}",
                  title_justify="left")
    for col in ("guid", "name", "rtype", "state", "metrics", "traces"):
        table.add_column(col)
    for res in summary["resources"]:
        style = "red" if res["state"] == "FAILED" else None
        metrics = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                            for k, v in (res.get("metrics") or {}).items())
        traces = "\n".join(f"{k}: {v}" for k, v in (res.get("traces") or {}).items())
        table.add_row(str(res["guid"]), res.get("name", ""), res["rtype"], res["state"],
                      metrics, traces, style=style)
    return table


# -- results ------------------------------------------------------------------------------------
def _frame(args: argparse.Namespace) -> pd.DataFrame:
    try:
        return runs_frame(args.results, experiment=args.exp_id, campaign=args.campaign,
                          state=args.state, since=args.since, until=args.until, where=args.where)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """Identity, outcome, the parameters that vary between the rows, the metrics."""
    params = [p for p in frame.attrs.get("parameters", []) if frame[p].astype(str).nunique() > 1]
    columns = ["exp_id", "run_id", "state"]
    columns += [c for c in ("campaign", "rerun_of") if frame[c].notna().any()]
    columns += params + frame.attrs.get("metrics", [])
    columns += ["failure"] if frame["failure"].notna().any() else []
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for _, row in frame.iterrows():
        table.add_row(*[_cell(row[c]) for c in columns],
                      style="red" if row["state"] == "FAILED" else None)
    return table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def export(frame: pd.DataFrame, fmt: str, out: str | None) -> str | None:
    """Write the frame as JSON, CSV or Parquet to ``out`` (stdout if None, not for
    Parquet); the path written, if any."""
    if fmt == "parquet":
        if not out:
            raise InvalidInputError("--format parquet writes a file: give --out FILE.parquet")
        frame.to_parquet(out, index=False)
        return out
    if fmt == "json":
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        text = json.dumps(records, indent=2, default=str)
    else:
        text = frame.to_csv(index=False)
    if out:
        Path(out).write_text(text)
        return out
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    return None


def cmd_results(args: argparse.Namespace) -> int:
    out, err = _consoles()
    fmt = "json" if args.json else args.format
    frame = _frame(args)
    root = settings.results_root(args.results)
    if frame.empty:
        what = f"experiment {args.exp_id!r}" if args.exp_id else "runs"
        err.print(f"no {what} matching under {root}")
        if args.exp_id:
            return EXIT_FAILED
        if fmt == "table":
            return EXIT_OK
    if fmt != "table":
        written = export(frame, fmt, args.out)
        if written:
            err.print(f"{len(frame)} runs written to {written}")
        return EXIT_OK
    out.print(frame_table(frame, f"{len(frame)} runs under {root}"))
    if args.exp_id or args.campaign:
        _warn(err, environment_warnings(frame))
    if args.exp_id:
        for run_dir in frame["run_dir"]:
            out.print(summary_table(named_summary(run_dir)))
    return EXIT_OK


def _warn(err: Console, warnings: list[str]) -> None:
    for text in warnings:
        err.print(f"[yellow]warning[/yellow]: {text}", highlight=False)


# -- diff ---------------------------------------------------------------------------------------
def _run_dir(ref: str, root: str | None) -> Path:
    try:
        return find_run(ref, root)
    except RunNotFound as exc:
        raise InvalidInputError(str(exc)) from None


def cmd_diff(args: argparse.Namespace) -> int:
    out, _ = _consoles()
    diff = diff_runs(_run_dir(args.run_a, args.results), _run_dir(args.run_b, args.results),
                     all_environment=args.all)
    if args.json:
        print(json.dumps(diff, indent=2, default=str))
    else:
        out.print(render_diff(diff))
    return EXIT_OK


# -- rerun --------------------------------------------------------------------------------------
def cmd_rerun(args: argparse.Namespace, run: RunDescription) -> int:
    """Run a past run's saved description again (``--set`` overrides), linked to it."""
    from nepi_prefect.execution.environment import description_path
    from nepi_prefect.spec.io import apply_overrides, read_description

    old = _run_dir(args.run, args.results)
    path = description_path(str(old))
    if path is None:
        raise InvalidInputError(f"run {old} saved no description (experiment.yaml or "
                                f"experiment.json): it cannot be run again")
    desc = apply_overrides(read_description(path), args.set, source=path)
    return run(desc, path, args, {"rerun_of": str(old)})


def finish_rerun(summary: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Record ``extra`` (e.g. ``rerun_of``) in the new run's summary."""
    if extra:
        summary.update(extra)
        annotate_run(summary["run_dir"], **extra)
    return summary


# -- plot ---------------------------------------------------------------------------------------
def cmd_plot(args: argparse.Namespace) -> int:
    from nepi_prefect.results.plot import PlotError, attach_plot, default_name, plot_metric

    out, err = _consoles()
    frame, where = campaign_runs(args.campaign, args.results)
    if frame.empty:
        raise InvalidInputError(f"no runs of campaign or experiment {args.campaign!r} under "
                                f"{settings.results_root(args.results)}")
    path = args.out or str(where / "plots" / default_name(args.x, args.y, args.hue))
    try:
        saved = plot_metric(frame, args.x, args.y, path, hue=args.hue,
                            title=f"{args.campaign}: {args.y} vs {args.x}")
    except PlotError as exc:
        raise InvalidInputError(str(exc)) from None
    out.print(f"plot: {saved}")
    _warn(err, environment_warnings(frame))
    key = artifact_key(args.campaign, "plot")
    try:
        artifact = attach_plot(saved, f"{args.campaign}: {args.y} vs {args.x}", key)
    except Exception as exc:  # the plot is saved; the Prefect copy is a convenience
        err.print(f"[yellow]could not attach the plot to Prefect[/yellow]: {exc}")
    else:
        if artifact:
            out.print(f"Prefect artifact: {key} ({artifact})")
    return EXIT_OK


def campaign_runs(name: str, root: str | None) -> tuple[pd.DataFrame, Path]:
    """The runs of campaign ``name`` and the directory its plots go in: the campaign's
    table (``results.campaign.campaign_frame``), else the runs of the experiment ``name``."""
    base = Path(settings.results_root(root))
    try:
        frame = campaign_frame(name, root)
    except (FileNotFoundError, ValueError):
        frame = runs_frame(root, campaign=name)
    if not frame.empty:
        return frame, base / "campaigns" / name
    return runs_frame(root, experiment=name), base / name


# -- parser -------------------------------------------------------------------------------------
def register(add: Callable[[str, Callable, str], argparse.ArgumentParser],
             run: RunDescription) -> None:
    """Add the commands to the parser; ``run`` runs a description as ``nepi-prefect run`` does."""
    p = add("results", cmd_results, "list and export recorded runs (filters, table/json/csv/parquet)")
    p.add_argument("exp_id", nargs="?", metavar="EXP_ID", help="only this experiment's runs, in detail")
    p.add_argument("--results", metavar="DIR", help="results directory")
    p.add_argument("--campaign", help="only runs of this campaign")
    p.add_argument("--state", choices=("COMPLETED", "FAILED"), type=str.upper, help="only runs that ended so")
    p.add_argument("--since", metavar="WHEN", help="runs begun after: ISO time or a delay back (2h)")
    p.add_argument("--until", metavar="WHEN", help="runs begun before: ISO time or a delay back")
    p.add_argument("--where", action="append", default=[], metavar="NAME.ATTR=VALUE",
                   help="only runs whose description sets this value (repeatable)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--out", metavar="FILE", help="write the export to FILE (required for parquet)")
    p.add_argument("--json", action="store_true", help="same as --format json")

    p = add("diff", cmd_diff, "what differs between two runs: description, attributes, "
                              "environment, metrics")
    for name in ("run_a", "run_b"):
        p.add_argument(name, metavar=name.upper(), help="run directory, EXP_ID/RUN_ID, run id or "
                                                        "experiment id (its latest run)")
    p.add_argument("--results", metavar="DIR", help="results directory")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.add_argument("--all", action="store_true",
                   help="every environment difference, not only those that matter for measurements")

    p = add("rerun", lambda a: cmd_rerun(a, run),
            "run a past run's description again, with the same attribute values, as a new run")
    p.add_argument("run", metavar="RUN", help="run directory, EXP_ID/RUN_ID, run id or experiment id")
    p.add_argument("--set", action="append", default=[], metavar="NAME.ATTR=VALUE",
                   help="override an attribute (repeatable)")
    p.add_argument("--recorder", choices=("prefect", "none"), default=None,
                   help="record the run as a Prefect flow run, or not at all")
    p.add_argument("--timeout", help='fail the experiment after this long, e.g. "5m"')
    p.add_argument("--results", metavar="DIR", help="results directory")

    p = add("plot", cmd_plot, "plot a metric against a parameter with 95%% confidence intervals")
    p.add_argument("campaign", metavar="CAMPAIGN", help="campaign name (or experiment id)")
    p.add_argument("--x", required=True, metavar="NAME.ATTR", help="the parameter on the x axis")
    p.add_argument("--y", required=True, metavar="RESOURCE.METRIC", help="the metric")
    p.add_argument("--hue", metavar="NAME.ATTR", help="one line per value of this parameter")
    p.add_argument("--out", metavar="FILE", help="where to save (.png or .svg; default: "
                                                 "<results>/<campaign>/plots/<y>-vs-<x>.png)")
    p.add_argument("--results", metavar="DIR", help="results directory")

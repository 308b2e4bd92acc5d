"""``nepi-prefect sweep`` (a campaign: resumes, redoes, runs on a work pool, replicates
until a stop rule holds) and ``nepi-prefect campaigns`` (their progress)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from nepi_prefect import settings
from nepi_prefect.results.stoprule import StopRule
from nepi_prefect.results.store import (REDO_CHOICES, STATES, CampaignStore, check_name,
                                        default_campaign_name)
from nepi_prefect.spec.io import parse_document, read_description, read_sweep, sweep_points
from nepi_prefect.spec.models import ExperimentDescription

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


def add_sweep_options(p: argparse.ArgumentParser, positive: Callable[[str], int]) -> None:
    """The campaign options of ``nepi-prefect sweep``."""
    p.add_argument("--campaign", metavar="NAME",
                   help="campaign name (default: the experiment's name and a hash of it and its "
                        "points); an existing campaign resumes: only runs not done are run")
    p.add_argument("--redo", choices=REDO_CHOICES, help="run the failed runs again, or all of them")
    p.add_argument("--work-pool", metavar="POOL",
                   help="run each point as a flow run of the experiment deployment on this work "
                        "pool (any of its workers takes points)")
    p.add_argument("--deployment", metavar="FLOW/DEPLOYMENT",
                   help="run points as flow runs of this experiment deployment")
    p.add_argument("--stop-metric", metavar="RESOURCE.METRIC",
                   help="replicate each point until this metric settles (see --ci-pct, --cv-pct)")
    p.add_argument("--ci-pct", type=float, metavar="X",
                   help="stop when the 95%% CI half-width is within X%% of the mean (NEPI: 5)")
    p.add_argument("--cv-pct", type=float, metavar="X",
                   help="stop when the coefficient of variation is at most X%%")
    p.add_argument("--min-runs", type=positive, metavar="N", help="runs per point before judging (default 3)")
    p.add_argument("--max-runs", type=positive, metavar="N", help="runs per point at most (default 10)")


def load_sweep(path: str, params: dict[str, list[str]]) -> tuple[ExperimentDescription, dict, list, int, int]:
    """The description, grid, points, repeat and concurrency of a sweep file or of an
    experiment file plus ``--param`` values."""
    data = parse_document(Path(path).read_text(), path)
    if isinstance(data, dict) and "experiment" in data:  # a sweep file
        sweep, desc = read_sweep(path)
        return desc, {**sweep.grid, **params}, sweep.points, sweep.repeat, sweep.max_concurrency
    return read_description(path), dict(params), [], 1, 4


def stop_rule(args: argparse.Namespace) -> StopRule | None:
    """The stop rule the options give, or None; ValueError says what is wrong."""
    given = [args.ci_pct, args.cv_pct, args.min_runs, args.max_runs]
    if args.stop_metric is None:
        if any(v is not None for v in given):
            raise ValueError("--ci-pct, --cv-pct, --min-runs and --max-runs need --stop-metric")
        return None
    extra = {k: v for k, v in (("ci_pct", args.ci_pct), ("cv_pct", args.cv_pct),
                                ("min_runs", args.min_runs), ("max_runs", args.max_runs)) if v is not None}
    if args.ci_pct is None and args.cv_pct is None:
        extra["ci_pct"] = 5.0  # NEPI's rule
    return StopRule(metric=args.stop_metric, **extra)


def run_sweep(args: argparse.Namespace, desc: ExperimentDescription, grid: dict, points: list,
              repeat: int, concurrency: int, rule: StopRule | None, out: Console, err: Console) -> int:
    from nepi_prefect.flows.sweep import sweep_flow  # imports Prefect, which sets up logging

    from nepi_prefect.results.campaign import campaign_frame, point_stats  # pandas: only when used

    root = settings.results_root(args.results)
    spec_points = _points(desc, grid, points, repeat, concurrency)
    name = check_name(args.campaign) if args.campaign else default_campaign_name(desc.name, desc.model_dump(mode="json"), spec_points)
    with _LiveProgress(name, root, out):
        state = sweep_flow(description=desc, grid=grid, points=points, repeat=repeat,
                           max_concurrency=concurrency, results_dir=root, timeout=args.timeout,
                           campaign=name, redo=args.redo, work_pool=args.work_pool,
                           deployment=args.deployment, stop_rule=rule, return_state=True)
    frame = campaign_frame(name, root)
    metrics = [rule.metric] if rule else frame.attrs.get("metrics", [])
    out.print(points_table(point_stats(frame), metrics, title=f"campaign {name}: {len(frame)} runs"))
    out.print(f"runs: {Path(root, 'campaigns', name, 'runs.csv')}")
    counts = frame["state"].value_counts().to_dict()
    if state.is_cancelled():
        err.print(f"[yellow]stopped[/yellow]: {state.message}; run the same command again to resume")
        return EXIT_STOPPED
    if not state.is_completed():
        err.print(f"[red]sweep {state.name}[/red]: {state.message}")
        return EXIT_FAILED
    if counts.get("failed"):
        err.print(f"[red]{counts['failed']} of {len(frame)} runs FAILED[/red] "
                  "(--redo failed runs them again)")
        return EXIT_FAILED
    return EXIT_OK


def _points(desc: ExperimentDescription, grid: dict, points: list, repeat: int, conc: int) -> list:
    from nepi_prefect.spec.models import SweepSpec
    return sweep_points(SweepSpec(experiment=desc, grid=grid, points=points, repeat=repeat,
                                  max_concurrency=conc))


def points_table(points: Any, metrics: list[str], title: str = "", limit: int = 4) -> Table:
    """One row per point: its parameters, runs, and ``mean ±ci95 (n)`` of up to ``limit``
    metrics (all of them are in ``points.csv``). Headers wrap, they are never cut."""
    table = Table(title=title, title_justify="left")
    rows = points.to_dict(orient="records") if len(points) else []
    params = [c for c in points.columns if c not in ("point", "runs", "done", "failed", "decision")
              and not c.rsplit(".", 1)[-1] in ("mean", "ci95", "n")]
    shown = metrics[:limit]
    for col in ["point", *params, "done", "failed", *(["decision"] if "decision" in points else []),
                *shown]:
        table.add_column(col, min_width=min(len(col), 30), overflow="fold")
    for row in rows:
        cells = [row["point"][:9], *[_cell(row.get(p)) for p in params], _cell(row["done"]),
                 _cell(row["failed"]), *([_cell(row.get("decision"))] if "decision" in points else []),
                 *[_stat(row, m) for m in shown]]
        table.add_row(*cells, style="red" if row.get("failed") else None)
    if len(metrics) > limit:
        table.caption = f"{len(metrics) - limit} more metrics in points.csv"
    return table


def _stat(row: dict[str, Any], metric: str) -> str:
    mean, half, n = row.get(f"{metric}.mean"), row.get(f"{metric}.ci95"), row.get(f"{metric}.n")
    if not n:
        return ""
    text = _cell(mean)
    return f"{text} ±{_cell(half)} ({n})" if half == half and half is not None else f"{text} ({n})"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _LiveProgress:
    """Runs per state, redrawn in the terminal while the sweep goes (read from the store)."""

    def __init__(self, name: str, root: str, out: Console):
        self.name, self.root = name, root
        self.live = Live(console=out, refresh_per_second=2, transient=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nepi-sweep-progress", daemon=True)

    def __enter__(self) -> "_LiveProgress":
        if self.live.console.is_terminal:
            self.live.start()
            self.thread.start()
        return self

    def _loop(self) -> None:
        store = None
        while not self.stop.wait(0.5):
            try:
                store = store or CampaignStore.open(self.name, self.root, create=False)
                counts = store.counts()
            except Exception:  # not created yet, or busy: the next tick will show it
                continue
            table = Table(title=f"campaign {self.name}", title_justify="left")
            for s in STATES:
                table.add_column(s, justify="right")
            table.add_row(*[str(counts[s]) for s in STATES])
            self.live.update(table)
        if store is not None:
            store.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.live.is_started:
            self.live.stop()


def cmd_campaigns(args: argparse.Namespace, out: Console) -> int:
    """``nepi-prefect campaigns``: every campaign with its progress."""
    from nepi_prefect.results.campaign import list_campaigns  # pandas: only when used

    found = list_campaigns(args.results)
    if not found:
        out.print(f"no campaigns under {settings.results_root(args.results)}")
        return EXIT_OK
    table = Table(title="campaigns", title_justify="left")
    for col in ("name", "experiment", "points", "done", "failed", "todo", "running", "path"):
        table.add_column(col, overflow="fold")
    for c in found:
        table.add_row(c["name"], c.get("experiment") or "", str(c["points"]), str(c["done"]),
                      str(c["failed"]), str(c["todo"]), str(c["running"]), c["path"],
                      style="red" if c["failed"] else None)
    out.print(table)
    return EXIT_OK

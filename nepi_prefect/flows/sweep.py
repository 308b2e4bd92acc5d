"""The sweep flow: the experiment at every point of a grid, as child flow runs."""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from nepi_prefect import settings
from nepi_prefect.flows._common import resolve_description
from nepi_prefect.flows.experiment import experiment_flow
from nepi_prefect.results.tables import artifact_key, flat_metrics, uniform_rows, write_csv
from nepi_prefect.spec.io import apply_overrides, sweep_points
from nepi_prefect.spec.models import ExperimentDescription, SweepSpec
from nepi_prefect.util.timefuncs import tsformat


@flow(name="nepi-sweep", log_prints=True)
def sweep_flow(description: ExperimentDescription | None = None,
               description_file: str | None = None,
               grid: dict[str, list[Any]] | None = None,
               points: list[dict[str, Any]] | None = None,
               repeat: int = 1, max_concurrency: int = 4,
               timeout: str | None = None,
               results_dir: str | None = None) -> dict[str, Any]:
    """Run the experiment at every point (grid product, then ``points``), ``repeat``
    times each, as child flow runs, at most ``max_concurrency`` at once.

    Gathers every run's metrics into one table artifact and one CSV file;
    returns ``{"rows": [...], "csv": path}``.
    """
    desc = resolve_description(description, description_file)
    spec = SweepSpec(experiment=desc, grid=grid or {}, points=points or [], repeat=repeat,
                     max_concurrency=max_concurrency)
    todo = [(i, r, p) for i, p in enumerate(sweep_points(spec)) for r in range(spec.repeat)]
    for i, point in enumerate(sweep_points(spec)):
        apply_overrides(desc, point, what=f"points[{i}]")  # fail fast, before any run
    results = settings.results_root(results_dir)

    def one(index: int, rep: int, point: dict[str, Any]) -> dict[str, Any]:
        name = f"{desc.name or 'experiment'}-p{index}-r{rep}"
        state = experiment_flow.with_options(flow_run_name=name)(
            description=desc, overrides=point, timeout=timeout, results_dir=results,
            return_state=True)
        return _sweep_row(index, rep, point, state)

    with ThreadPoolExecutor(max_workers=spec.max_concurrency, thread_name_prefix="nepi-sweep") as pool:
        # Each child flow must see this flow run as its parent: copy the context.
        futures = [pool.submit(contextvars.copy_context().run, one, i, r, p) for i, r, p in todo]
        rows = [f.result() for f in futures]
    rows = uniform_rows(rows)
    csv_path = write_csv(rows, os.path.join(results, desc.name or "experiment", "sweeps",
                                            f"sweep-{tsformat()}.csv"))
    create_table_artifact(table=rows, key=artifact_key(desc.name, "sweep"),
                          description=f"{len(rows)} runs of {desc.name}; CSV: {csv_path}")
    return {"rows": rows, "csv": csv_path}


def _sweep_row(index: int, rep: int, point: dict[str, Any], state: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"point": index, "repetition": rep, **point,
                           "state": "COMPLETED" if state.is_completed() else "FAILED",
                           "flow_run_id": str(state.state_details.flow_run_id)}
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if isinstance(summary, dict):
        row["run_dir"] = summary.get("run_dir")
        row.update(flat_metrics(summary))
    else:
        row["error"] = state.message
    return row

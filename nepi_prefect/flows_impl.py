"""The Prefect flows users deploy: one experiment, a sweep, a run-until-converged.

``flows/*.py`` are thin entrypoints over these. Each flow takes the
description as a pydantic model (the Prefect UI renders it as a form) or
as a file path (handy in ``prefect.yaml``), plus ``NAME.ATTR`` overrides.
"""

from __future__ import annotations

import contextvars
import csv
import math
import os
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from nepi_prefect import settings
from nepi_prefect.execution.runner import ExperimentRunner
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.spec.io import (
    apply_overrides,
    build_experiment,
    read_description,
    resource_names,
    sweep_points,
    write_description,
)
from nepi_prefect.spec.models import ExperimentDescription, SweepSpec
from nepi_prefect.spec.run import run_experiment
from nepi_prefect.util.timefuncs import tsformat


class ExperimentFailed(RuntimeError):
    """The experiment ended FAILED; raising it makes the flow run Failed."""


def resolve_description(description: ExperimentDescription | dict | None,
                        description_file: str | None,
                        overrides: dict[str, Any] | None = None) -> ExperimentDescription:
    """The description given inline or by path, with ``overrides`` applied."""
    if (description is None) == (description_file is None):
        raise ValueError("give exactly one of description or description_file")
    if description_file is not None:
        desc = read_description(description_file)
    elif isinstance(description, dict):
        desc = ExperimentDescription.model_validate(description)
    else:
        desc = description
    return apply_overrides(desc, overrides, source=description_file)


def _results_dir(results_dir: str | None) -> str:
    return settings.results_root(results_dir)


# -- one experiment ------------------------------------------------------------------------------
@flow(name="nepi-experiment", log_prints=True)
def experiment_flow(description: ExperimentDescription | None = None,
                    description_file: str | None = None,
                    overrides: dict[str, Any] | None = None,
                    timeout: str | None = None,
                    results_dir: str | None = None) -> dict[str, Any]:
    """Run one experiment; its RM actions are this flow run's task runs.

    Raises :class:`ExperimentFailed` (the flow run is Failed) when the experiment FAILED.
    """
    desc = resolve_description(description, description_file, overrides)
    ec = build_experiment(desc, recorder=PrefectRecorder(attach="current"),
                          local_dir=_results_dir(results_dir))
    summary = run_experiment(ec, timeout=timeout)
    get_run_logger().info("experiment %s run %s: %s (results in %s)", summary["exp_id"],
                          summary["run_id"], summary["state"], summary["run_dir"])
    if summary["state"] != "COMPLETED":
        raise ExperimentFailed(f"experiment {summary['exp_id']} FAILED: {summary.get('failure')}")
    return summary


# -- sweep -----------------------------------------------------------------------------------------
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
    results = _results_dir(results_dir)

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
    rows = _uniform(rows)
    csv_path = _write_csv(rows, os.path.join(results, desc.name or "experiment", "sweeps",
                                             f"sweep-{tsformat()}.csv"))
    create_table_artifact(table=rows, key=_artifact_key(desc.name, "sweep"),
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


def flat_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"<resource name>.<metric>": value}`` over a summary's resources."""
    return {f"{res.get('name', res['guid'])}.{key}": value
            for res in summary.get("resources", [])
            for key, value in (res.get("metrics") or {}).items()}


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same columns in every row (a table needs them), in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c) for c in columns} for row in rows]


def _write_csv(rows: list[dict[str, Any]], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _artifact_key(name: str | None, kind: str) -> str:
    # Artifact keys: lowercase letters, digits and dashes only.
    base = "".join(c if c.isalnum() else "-" for c in (name or "experiment").lower())
    return f"nepi-{kind}-{base}".strip("-")[:100]


# -- run until converged -----------------------------------------------------------------------------
@flow(name="nepi-converge", log_prints=True)
def converge_flow(description: ExperimentDescription | None = None,
                  description_file: str | None = None,
                  metric: str = "ping.rtt_avg_ms",
                  min_runs: int = 3, max_runs: int = 10,
                  relative_ci: float = 0.05,
                  overrides: dict[str, Any] | None = None,
                  results_dir: str | None = None) -> dict[str, Any]:
    """Re-run the experiment (each run a child flow run) until the 95% confidence
    interval of ``metric`` ("<resource>.<metric>") is within ``relative_ci`` of
    its mean, between ``min_runs`` and ``max_runs`` runs."""
    desc = resolve_description(description, description_file, overrides)
    resource, _, key = metric.partition(".")
    desc.resource(resource)  # KeyError now, not after the first run
    results = _results_dir(results_dir)
    path = write_description(desc, os.path.join(tempfile.mkdtemp(prefix="nepi-converge-"),
                                                "experiment.yaml"))

    def compute(ec: Any, run: int) -> float | None:
        names = {n: g for g, n in resource_names(ec).items()}
        value = ec.get_resource(names[resource]).get_metrics().get(key)
        get_run_logger().info("run %d: %s = %s", run, metric, value)
        return value

    def converged(ec: Any, run: int, samples: list[float]) -> bool:
        return ci95(samples) <= relative_ci * abs(statistics.fmean(samples))

    runner = ExperimentRunner(recorder_factory=lambda: PrefectRecorder(attach="subflow"),
                              local_dir=results)
    runs = runner.run(path, min_runs=min_runs, max_runs=max_runs, wait_guids=None,
                      compute_metric_callback=compute, evaluate_convergence_callback=converged)
    samples = runner.samples
    result = {"metric": metric, "runs": runs, "samples": samples,
              "mean": statistics.fmean(samples) if samples else None,
              "ci95": ci95(samples) if samples else None,
              "converged": bool(samples) and ci95(samples) <= relative_ci * abs(statistics.fmean(samples))}
    create_table_artifact(table=[{"run": i + 1, metric: v} for i, v in enumerate(samples)],
                          key=_artifact_key(desc.name, "converge"),
                          description=f"{metric}: mean {result['mean']}, ci95 {result['ci95']}, "
                                      f"{'converged' if result['converged'] else 'not converged'}")
    return result


def ci95(samples: list[float]) -> float:
    """Half-width of the normal 95% confidence interval of the mean (NEPI's test)."""
    if len(samples) < 2:
        return math.inf
    return 2 * statistics.pstdev(samples) / math.sqrt(len(samples))

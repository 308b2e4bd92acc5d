"""The converge flow: re-run the experiment until a metric's mean is known well enough."""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from nepi_prefect import settings
from nepi_prefect.execution.runner import ExperimentRunner
from nepi_prefect.flows._common import resolve_description
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.results.tables import artifact_key, ci95
from nepi_prefect.spec.io import resource_names, write_description
from nepi_prefect.spec.models import ExperimentDescription


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
                              local_dir=settings.results_root(results_dir))
    runs = runner.run(path, min_runs=min_runs, max_runs=max_runs, wait_guids=None,
                      compute_metric_callback=compute, evaluate_convergence_callback=converged)
    samples = runner.samples
    result = {"metric": metric, "runs": runs, "samples": samples,
              "mean": statistics.fmean(samples) if samples else None,
              "ci95": ci95(samples) if samples else None,
              "converged": bool(samples) and converged(None, runs, samples)}
    create_table_artifact(table=[{"run": i + 1, metric: v} for i, v in enumerate(samples)],
                          key=artifact_key(desc.name, "converge"),
                          description=f"{metric}: mean {result['mean']}, ci95 {result['ci95']}, "
                                      f"{'converged' if result['converged'] else 'not converged'}")
    return result

"""The flow of one experiment: its RM actions are the flow run's task runs."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from nepi_prefect import settings
from nepi_prefect.flows._common import ExperimentFailed, resolve_description
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.spec.io import build_experiment
from nepi_prefect.spec.models import ExperimentDescription
from nepi_prefect.spec.run import run_experiment


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
                          local_dir=settings.results_root(results_dir))
    summary = run_experiment(ec, timeout=timeout)
    get_run_logger().info("experiment %s run %s: %s (results in %s)", summary["exp_id"],
                          summary["run_id"], summary["state"], summary["run_dir"])
    if summary["state"] != "COMPLETED":
        raise ExperimentFailed(f"experiment {summary['exp_id']} FAILED: {summary.get('failure')}")
    return summary

"""The flow of one experiment: its RM actions are the flow run's task runs. Also one run
of a campaign, in this process (``run_point``) or dispatched to a worker (the flow with
``campaign`` and ``run_key``)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from nepi_prefect import settings
from nepi_prefect.flows._common import (ExperimentFailed, description_name, nepi_flow,
                                        resolve_description, run_name)
from nepi_prefect.flows.campaign_run import RunRecord
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.results.tables import flat_metrics
from nepi_prefect.spec.io import apply_overrides, build_experiment
from nepi_prefect.spec.models import ExperimentDescription
from nepi_prefect.spec.run import run_experiment


def _flow_run_name() -> str:
    # Deployment runs and direct calls are named after the experiment and its
    # overrides (e.g. ping-interval=0.2), not Prefect's random adjective-animal.
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return run_name(description_name(params), params.get("overrides"))


@nepi_flow(name="nepi-experiment", log_prints=True, flow_run_name=_flow_run_name)
def experiment_flow(description: ExperimentDescription | None = None,
                    description_file: str | None = None,
                    overrides: dict[str, Any] | None = None,
                    timeout: str | None = None,
                    results_dir: str | None = None,
                    campaign: str | None = None,
                    run_key: str | None = None) -> dict[str, Any]:
    """Run one experiment; its RM actions are this flow run's task runs.

    Given ``campaign`` and ``run_key`` (a campaign dispatched it), it keeps that run's
    heartbeat in the campaign store and records its outcome there.
    Raises :class:`ExperimentFailed` (the flow run is Failed) when the experiment FAILED.

    Args:
        description: the experiment: its resources, connections, conditions and traces.
        description_file: or a YAML/JSON description file, relative to the working directory.
        overrides: NAME.ATTR values replacing the description's, e.g. {"ping.count": 10}.
        timeout: end the experiment (FAILED) after this long, e.g. "2m" (default: the
            description's timeout).
        results_dir: where traces and summary.json go (default $NEPI_PREFECT_RESULTS).
        campaign: the campaign that dispatched this run (given with run_key), if any.
        run_key: this run's key in that campaign's store.
    """
    if (campaign is None) != (run_key is None):
        raise ValueError("give both campaign and run_key, or neither")
    if campaign is None:
        desc = resolve_description(description, description_file, overrides)
        return _outcome(_run(desc, timeout, results_dir))
    with RunRecord(campaign, run_key, results_dir) as record:
        desc = resolve_description(description, description_file, overrides)
        summary = _run(desc, timeout, results_dir)
        record.finish(summary, flat_metrics(summary))
    return _outcome(summary)


def run_point(desc: ExperimentDescription, overrides: dict[str, Any], campaign: str, run_key: str,
              timeout: str | None, results_dir: str | None) -> None:
    """One run of a campaign in this process: the experiment, recorded as a child flow run
    of the current flow by its recorder (the run never waits on Prefect's subflow engine),
    its heartbeat and outcome in the campaign store."""
    with RunRecord(campaign, run_key, results_dir) as record:
        # the next run need not wait for this one's record: the campaign waits at its end
        run = record.store.run(run_key) or {}
        # named from the experiment and its parameters, e.g. ping-interval=0.2-r1
        recorder = PrefectRecorder(attach="subflow", background=True,
                                   name=run_name(desc.name, overrides, run.get("rep")),
                                   tags=[f"campaign:{campaign}"])
        ec = build_experiment(apply_overrides(desc, overrides), recorder=recorder,
                              local_dir=settings.results_root(results_dir))
        summary = run_experiment(ec, timeout=timeout)
        record.finish(summary, flat_metrics(summary), flow_run_id=recorder.flow_run_id)


def _run(desc: ExperimentDescription, timeout: str | None, results_dir: str | None) -> dict[str, Any]:
    ec = build_experiment(desc, recorder=PrefectRecorder(attach="current"),
                          local_dir=settings.results_root(results_dir))
    summary = run_experiment(ec, timeout=timeout)
    get_run_logger().info("experiment %s run %s: %s (results in %s)", summary["exp_id"],
                          summary["run_id"], summary["state"], summary["run_dir"])
    return summary


def _outcome(summary: dict[str, Any]) -> dict[str, Any]:
    if summary["state"] != "COMPLETED":
        raise ExperimentFailed(f"experiment {summary['exp_id']} FAILED: {summary.get('failure')}")
    return summary

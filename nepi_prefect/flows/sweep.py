"""The sweep flow: the experiment at every point of a grid, as a campaign that resumes."""

from __future__ import annotations

from typing import Any, Literal

from nepi_prefect.flows._common import campaign_run_name, nepi_flow, resolve_description
from nepi_prefect.flows.campaign import Plan, default_name
from nepi_prefect.flows.campaign_run import Options, run_campaign
from nepi_prefect.flows.experiment import experiment_flow, run_point
from nepi_prefect.results.stoprule import StopRule
from nepi_prefect.results.tables import artifact_key
from nepi_prefect.spec.io import apply_overrides, sweep_points
from nepi_prefect.spec.models import ExperimentDescription, SweepSpec


@nepi_flow(name="nepi-sweep", log_prints=True, flow_run_name=campaign_run_name("sweep"))
def sweep_flow(description: ExperimentDescription | None = None,
               description_file: str | None = None,
               grid: dict[str, list[Any]] | None = None,
               points: list[dict[str, Any]] | None = None,
               repeat: int = 1, max_concurrency: int = 4,
               timeout: str | None = None,
               results_dir: str | None = None,
               campaign: str | None = None,
               redo: Literal["failed", "all"] | None = None,
               work_pool: str | None = None,
               deployment: str | None = None,
               stop_rule: StopRule | None = None) -> Any:
    """Run the experiment at every point (grid product, then ``points``), ``repeat`` times
    each (or until ``stop_rule`` holds), at most ``max_concurrency`` at once, as a campaign.

    The campaign (default name: the experiment's name and a hash of it and its points)
    resumes: only runs not done are run; ``redo`` reruns the failed ones or all. Each run
    is a child flow run here, or, with ``work_pool`` (or ``deployment``), a flow run of
    the experiment deployment that any worker of the pool takes. Returns ``{"campaign",
    "rows", "points", "csv", "parquet", ...}``; stopped by SIGINT/SIGTERM the flow run
    ends Cancelled, with the table of what finished written.

    Args:
        description: the experiment swept over.
        description_file: or a YAML/JSON description file, relative to the working directory.
        grid: NAME.ATTR -> list of values; every combination is a point.
        points: more points, each a dict of NAME.ATTR values.
        repeat: runs per point.
        max_concurrency: runs at most running at once.
        timeout: each run's time limit, e.g. "2m" (default: the description's timeout).
        results_dir: where traces, summaries and tables go (default $NEPI_PREFECT_RESULTS).
        campaign: the campaign's name (default: the experiment's name and a hash).
        redo: rerun the "failed" runs, or "all"; by default only runs not done yet.
        work_pool: run each point as a flow run of the experiment deployment on this pool.
        deployment: the experiment deployment to use with work_pool.
        stop_rule: replicate each point until a metric settles, instead of repeat times.
    """
    desc = resolve_description(description, description_file)
    spec = SweepSpec(experiment=desc, grid=grid or {}, points=points or [], repeat=repeat,
                     max_concurrency=max_concurrency)
    todo = sweep_points(spec)
    for i, point in enumerate(todo):
        apply_overrides(desc, point, what=f"points[{i}]")  # fail fast, before any run
    plan = Plan(name=campaign or default_name(desc, todo), desc=desc, points=todo,
                repeat=spec.repeat, stop_rule=stop_rule)
    return run_campaign(experiment_flow, run_point, plan, Options(
        results_dir=results_dir, concurrency=spec.max_concurrency, timeout=timeout, redo=redo,
        work_pool=work_pool, deployment=deployment, artifact_key=artifact_key(desc.name, "sweep")))

"""The converge flow: re-run the experiment until a metric's mean is known well enough
(NEPI's ExperimentRunner rule), as a one-point campaign."""

from __future__ import annotations

from typing import Any, Literal

from nepi_prefect.flows._common import campaign_run_name, nepi_flow, resolve_description
from nepi_prefect.flows.campaign import Plan, default_name
from nepi_prefect.flows.campaign_run import Options, run_campaign
from nepi_prefect.flows.experiment import experiment_flow, run_point
from nepi_prefect.results.stoprule import StopRule
from nepi_prefect.results.tables import artifact_key
from nepi_prefect.spec.models import ExperimentDescription


@nepi_flow(name="nepi-converge", log_prints=True, flow_run_name=campaign_run_name("converge"))
def converge_flow(description: ExperimentDescription | None = None,
                  description_file: str | None = None,
                  metric: str = "ping.rtt_avg_ms",
                  min_runs: int = 3, max_runs: int = 10,
                  relative_ci: float | None = 0.05,
                  cv: float | None = None,
                  overrides: dict[str, Any] | None = None,
                  results_dir: str | None = None,
                  max_concurrency: int = 1,
                  timeout: str | None = None,
                  campaign: str | None = None,
                  redo: Literal["failed", "all"] | None = None,
                  work_pool: str | None = None,
                  deployment: str | None = None) -> Any:
    """Re-run the experiment (each run a child flow run, or a run on ``work_pool``) until
    the 95% confidence interval of ``metric`` ("<resource>.<metric>") is within
    ``relative_ci`` of its mean (NEPI's rule) and/or its coefficient of variation is at
    most ``cv``, between ``min_runs`` and ``max_runs`` runs. A one-point campaign: it
    resumes like a sweep.

    Args:
        description: the experiment re-run.
        description_file: or a YAML/JSON description file, relative to the working directory.
        metric: the metric that must converge, as "<resource>.<metric>".
        min_runs: runs made whatever the metric does.
        max_runs: runs made at most.
        relative_ci: the 95% confidence interval's half-width, relative to the mean, that
            counts as converged.
        cv: or the coefficient of variation that counts as converged.
        overrides: NAME.ATTR values replacing the description's, e.g. {"ping.count": 10}.
        results_dir: where traces and summaries go (default $NEPI_PREFECT_RESULTS).
        max_concurrency: runs at most running at once.
        timeout: each run's time limit, e.g. "2m" (default: the description's timeout).
        campaign: the campaign's name (default: derived from the experiment).
        redo: rerun the "failed" runs, or "all"; by default only runs not done yet.
        work_pool: run each run as a flow run of the experiment deployment on this pool.
        deployment: the experiment deployment to use with work_pool.
    """
    desc = resolve_description(description, description_file, overrides)
    resource, _, _ = metric.partition(".")
    desc.resource(resource)  # KeyError now, not after the first run
    rule = StopRule(metric=metric, min_runs=min_runs, max_runs=max_runs,
                    ci_pct=None if relative_ci is None else 100 * relative_ci,
                    cv_pct=None if cv is None else 100 * cv)
    plan = Plan(name=campaign or default_name(desc, [{}]), desc=desc, points=[{}], stop_rule=rule)
    result = run_campaign(experiment_flow, run_point, plan, Options(
        results_dir=results_dir, concurrency=max_concurrency, timeout=timeout, redo=redo,
        work_pool=work_pool, deployment=deployment, artifact_key=artifact_key(desc.name, "converge")))
    if not isinstance(result, dict):
        return result  # stopped: the Cancelled state
    samples = [r[metric] for r in result["rows"] if r["state"] == "done" and r.get(metric) is not None]
    decision = next(iter(result["decisions"].values()), None) or {}
    return {**result, "metric": metric, "runs": len(result["rows"]), "samples": samples,
            "mean": decision.get("mean"), "ci95": decision.get("ci95"),
            "converged": decision.get("decision") == "converged", "decision": decision}

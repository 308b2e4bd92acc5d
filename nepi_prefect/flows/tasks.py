"""Tasks for users' own flows, the way prefect-shell offers ``shell_run_command``.

::

    from prefect import flow
    from nepi_prefect.flows.tasks import run_experiment_task

    @flow
    def nightly():
        summary = run_experiment_task("examples/ping.yaml", overrides={"ping.count": 10})
        return summary["resources"]

The experiment is recorded as a child flow run of the user's flow (its RM
actions are that child's task runs); the task returns the run's summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

from prefect import task

from nepi_prefect import settings
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.flows._common import ExperimentFailed, resolve_description
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.spec.io import build_experiment
from nepi_prefect.spec.models import ExperimentDescription
from nepi_prefect.spec.run import run_experiment

#: what :func:`run_experiment_task` runs: a description (model, dict or file
#: path), a built EC, or a function building one
Experiment = Union[ExperimentDescription, dict, str, Path, ExperimentController,
                   Callable[[], ExperimentController]]


def _build(experiment: Experiment, overrides: dict[str, Any] | None,
           results_dir: str | None) -> ExperimentController:
    if callable(experiment) and not isinstance(experiment, ExperimentController):
        experiment = experiment()
    if isinstance(experiment, ExperimentController):
        if overrides:
            raise ValueError("overrides apply to a description, not to a built "
                             "ExperimentController: set its attributes with ec.set()")
        return experiment
    if isinstance(experiment, (str, Path)):
        desc = resolve_description(None, str(experiment), overrides)
    elif isinstance(experiment, (ExperimentDescription, dict)):
        desc = resolve_description(experiment, None, overrides)
    else:
        raise TypeError("run_experiment_task runs an ExperimentDescription, a dict, a "
                        "description file path, an ExperimentController or a function "
                        f"returning one, not {type(experiment).__name__}")
    return build_experiment(desc, recorder=PrefectRecorder(attach="auto"),
                            local_dir=settings.results_root(results_dir))


@task(name="run-experiment", task_run_name="run-experiment")
def run_experiment_task(experiment: Experiment, overrides: dict[str, Any] | None = None,
                        timeout: str | float | None = None, results_dir: str | None = None,
                        raise_on_failure: bool = True) -> dict[str, Any]:
    """Run one experiment inside any flow and return its summary.

    Args:
        experiment: the description (an ExperimentDescription, its dict, or a YAML/JSON
            file path), a built ExperimentController, or a function returning one.
        overrides: NAME.ATTR values applied to a description (e.g. {"ping.count": 10}).
        timeout: end the experiment (FAILED) after this long, e.g. "2m" or 120.
        results_dir: where traces and summary.json go (default $NEPI_PREFECT_RESULTS).
        raise_on_failure: raise ExperimentFailed (the task run is Failed) when the
            experiment FAILED; otherwise return its summary either way.
    """
    ec = _build(experiment, overrides, results_dir)
    summary = run_experiment(ec, timeout=timeout)
    if raise_on_failure and summary["state"] != "COMPLETED":
        raise ExperimentFailed(f"experiment {summary['exp_id']} FAILED: {summary.get('failure')}")
    return summary

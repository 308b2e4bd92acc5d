"""The Prefect flows users deploy: one experiment, a sweep, a run-until-converged.

``flows/*.py`` at the repository root are thin entrypoints over these. Each
flow takes the description as a pydantic model (the Prefect UI renders it as
a form) or as a file path (handy in ``prefect.yaml``), plus ``NAME.ATTR``
overrides.
"""

from nepi_prefect.flows._common import ExperimentFailed, resolve_description
from nepi_prefect.flows.converge import converge_flow
from nepi_prefect.flows.experiment import experiment_flow
from nepi_prefect.flows.sweep import sweep_flow

__all__ = ["ExperimentFailed", "resolve_description", "experiment_flow", "sweep_flow",
           "converge_flow"]

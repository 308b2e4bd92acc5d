"""Results: tables of runs and campaigns, manifests, comparisons and plots.

Import what you need from its module; this package re-exports the main entry points.
"""

from nepi_prefect.results.diff import diff_runs
from nepi_prefect.results.manifest import campaign_warnings, load_manifest
from nepi_prefect.results.query import find_run, runs_frame

__all__ = ["campaign_warnings", "diff_runs", "find_run", "load_manifest", "runs_frame"]

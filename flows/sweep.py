"""Deployable flow: a parameter sweep as child flow runs (entrypoint ``flows/sweep.py:sweep``)."""

from nepi_prefect.flows.sweep import sweep_flow as sweep

__all__ = ["sweep"]

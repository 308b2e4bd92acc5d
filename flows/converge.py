"""Deployable flow: re-run until a metric converges (entrypoint ``flows/converge.py:converge``)."""

from nepi_prefect.flows.converge import converge_flow as converge

__all__ = ["converge"]

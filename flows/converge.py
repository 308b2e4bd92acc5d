"""Deployable flow: re-run until a metric converges (entrypoint ``flows/converge.py:converge``)."""

from nepi_prefect.flows_impl import converge_flow as converge

__all__ = ["converge"]

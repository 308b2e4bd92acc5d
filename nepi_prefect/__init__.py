"""nepi-prefect: NEPI-style network experiments, run and recorded as Prefect flows.

Port a NEPI script by changing its imports from ``nepi.`` to ``nepi_prefect.``;
the user's API is :class:`nepi_prefect.execution.ec.ExperimentController`.
"""

__version__ = "0.1.0"

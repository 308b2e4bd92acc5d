"""Small helpers shared by the test modules that build experiments by hand."""

from __future__ import annotations

import os
from typing import Iterator

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder


def engine_ec(tmp_path, prefix: str) -> Iterator[ExperimentController]:
    """An engine-only EC (no Prefect record) with results under ``tmp_path``; shut down after."""
    ec = ExperimentController(exp_id=f"{prefix}-{os.urandom(3).hex()}", local_dir=str(tmp_path),
                              recorder=Recorder())
    try:
        yield ec
    finally:
        ec.shutdown()


def add_rm(ec: ExperimentController, rtype: str, node: int | None = None, **attrs) -> int:
    """Register an RM of ``rtype`` with ``attrs`` set, connected to ``node`` if given."""
    guid = ec.register_resource(rtype)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    if node is not None:
        ec.register_connection(guid, node)
    return guid

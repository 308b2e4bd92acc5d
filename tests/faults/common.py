"""What every fault scenario asserts, and the pieces they share."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Iterator

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.fixtures.crashed import pgrep
from tests.helpers import wait_until

#: the end states a flow run keeps
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def new_marker(kind: str) -> str:
    return f"nepi-fault-{kind}-{os.urandom(4).hex()}"


def recorded_ec(prefix: str, results: str) -> tuple[ExperimentController, str]:
    """An EC recording into the session's Prefect server (``prefect_server``) and its exp_id."""
    exp_id = f"{prefix}-{os.urandom(3).hex()}"
    return ExperimentController(exp_id=exp_id, local_dir=results,
                                recorder=PrefectRecorder(timeout=120)), exp_id


def app_on(ec: ExperimentController, node: int, command: str, collect: bool = True) -> int:
    """A LinuxApplication on ``node``; its stdout collected into the run directory."""
    app = ec.register_resource("LinuxApplication")
    ec.set(app, "command", command)
    ec.register_connection(app, node)
    if collect:
        collector = ec.register_resource("Collector")
        ec.set(collector, "traceName", "stdout")
        ec.register_connection(collector, app)
    return app


def collector_of(ec: ExperimentController, app: int) -> int:
    """The guid of the Collector ``app_on`` connected to ``app``."""
    (collector,) = ec.get_resource(app).get_connected("Collector")
    return collector.guid


def node_on(ec: ExperimentController, attrs: dict) -> int:
    node = ec.register_resource("LinuxNode")
    for key, value in attrs.items():
        ec.set(node, key, value)
    return node


@contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    """The block (a wait, a shutdown) returns within ``seconds``."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < seconds, f"{what} took {took:.1f} s (bound {seconds} s)"


def no_process_left(marker: str, timeout: float = 30) -> None:
    wait_until(lambda: pgrep(marker) == [], timeout=timeout,
               message=lambda: f"processes left on the host: {pgrep(marker)}")


def summary_on_disk(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def prefect_final(exp_id: str, timeout: float = 180) -> tuple[str, str | None]:
    """The final state (type, message) of the run's flow run, read back through
    Prefect's client; exactly one flow run carries the experiment's tag."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    def final() -> list:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[exp_id])), limit=10)
        return runs if runs and all(r.state.type.value in FINAL for r in runs) else []

    runs = wait_until(final, timeout=timeout, message=f"a final flow run state for {exp_id}",
                      interval=0.5)
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0].state.type.value, runs[0].state.message

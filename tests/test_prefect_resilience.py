"""A slow, missing or restarting Prefect API slows the record, never the experiment."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)
from tests.fixtures.prefect_api import free_port, launch_server, stop_server

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("engine_types")]


def apps(ec: ExperimentController, count: int, duration: float) -> list[int]:
    guids = []
    for _ in range(count):
        guid = ec.register_resource("TestApp")
        ec.set(guid, "duration", duration)
        guids.append(guid)
    return guids


def test_unreachable_api_does_not_slow_the_experiment(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"       # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}):
        recorder = PrefectRecorder(timeout=3)
        ec = ExperimentController(exp_id="no-api", local_dir=str(tmp_path), recorder=recorder)
        guids = apps(ec, 20, 0.2)
        started = time.monotonic()
        ec.deploy()
        assert ec.wait_finished(guids, timeout=10)
        assert time.monotonic() - started < 2.0       # the engine did not wait on the API
        closing = time.monotonic()
        ec.shutdown()
        assert time.monotonic() - closing < 20        # bounded: timeout, plus grace
    assert recorder.outcome.confirmed is False
    assert any("connect" in error for error in recorder.outcome.errors)
    assert ec.summary()["state"] == "COMPLETED"        # the experiment itself went well


def test_restarting_api_server_keeps_the_whole_record(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="nepi-prefect-restart-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = launch_server(home, port)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            recorder = PrefectRecorder(timeout=90)
            ec = ExperimentController(exp_id=f"restart-{uuid.uuid4().hex[:6]}",
                                      local_dir=str(tmp_path), recorder=recorder)
            guids = apps(ec, 10, 4.0)
            started = time.monotonic()
            ec.deploy()
            assert ec.wait_started(guids, timeout=10)
            stop_server(server)                        # the API goes away mid-experiment
            assert ec.wait_finished(guids, timeout=20)
            elapsed = time.monotonic() - started
            assert elapsed < 6.5                        # 4 s of apps, not slowed by the outage
            server = launch_server(home, port)          # ... and comes back
            ec.shutdown()
            assert recorder.outcome.confirmed is True, recorder.outcome.errors
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(recorder.flow_run_id)
                task_runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
            assert flow_run.state.is_completed()
            names = {run.name: run.state.type.value for run in task_runs}
            for guid in guids:
                for kind in ("deploy", "start", "release"):
                    assert names[f"{kind}-TestApp-{guid}"] == "COMPLETED"
    finally:
        stop_server(server)

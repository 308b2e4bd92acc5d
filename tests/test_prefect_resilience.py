"""A slow, missing or restarting Prefect API slows the record, never the experiment,
and loses none of it: the journal keeps it until the server has it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.orchestration import replay
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)
from tests.fixtures.prefect_api import (free_port, launch_server, server_home, stop_server,
                                        wait_for_record)

# real servers and processes on a possibly saturated machine: minutes, not seconds
pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("engine_types"),
              pytest.mark.timeout(1200)]


def apps(ec: ExperimentController, count: int, duration: float) -> list[int]:
    guids = []
    for _ in range(count):
        guid = ec.register_resource("TestApp")
        ec.set(guid, "duration", duration)
        guids.append(guid)
    return guids


def test_unreachable_api_keeps_the_record_in_the_journal(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"       # nothing listens there (yet)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        recorder = PrefectRecorder(timeout=60)
        ec = ExperimentController(exp_id=f"no-api-{uuid.uuid4().hex[:6]}",
                                  local_dir=str(tmp_path), recorder=recorder)
        guids = apps(ec, 20, 0.2)
        started = time.monotonic()
        ec.deploy()
        assert ec.wait_finished(guids, timeout=30)
        ec.shutdown()
        # close() did not sit out its 60 s: nobody listens, the journal has the record
        assert time.monotonic() - started < 45
    assert recorder.delivered is False
    journal = Path(recorder.outcome.journal)
    assert journal.exists() and journal.stat().st_size > 0
    assert any("Connect" in error for error in recorder.outcome.errors)
    assert ec.summary()["state"] == "COMPLETED"        # the experiment itself went well

    # The server comes up: a flush (or the next nepi-prefect process) ships the record.
    home = server_home("nepi-prefect-late-")
    server = launch_server(home, port)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            report = replay.flush()
            assert ec.exp_id + f"-{ec.run_id}" in report.shipped, report
            assert not journal.exists()
            with get_client(sync_client=True) as client:
                [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=dict(any_=[f"{ec.exp_id}-{ec.run_id}"])))
                assert flow_run.state.is_completed()
                recorder.outcome.flow_run_id = flow_run.id
                _wait_tasks(client, flow_run.id, 20 * 3 + 1)
    finally:
        stop_server(server)


def _wait_tasks(client, flow_run_id, count: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
        states = {run.name: run.state.type.value for run in runs if run.state}
        if len(states) >= count and all(s == "COMPLETED" for s in states.values()):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def test_server_killed_and_restarted_mid_run_gets_the_whole_record(tmp_path):
    home = server_home("nepi-prefect-restart-")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = launch_server(home, port)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            recorder = PrefectRecorder(timeout=120)
            ec = ExperimentController(exp_id=f"restart-{uuid.uuid4().hex[:6]}",
                                      local_dir=str(tmp_path), recorder=recorder)
            guids = apps(ec, 10, 4.0)
            started = time.monotonic()
            ec.deploy()
            assert ec.wait_started(guids, timeout=30)
            stop_server(server, kill=True)             # the API dies mid-experiment
            assert ec.wait_finished(guids, timeout=30)
            assert time.monotonic() - started < 60       # 4 s of apps, not held up by it
                                                         # (its record timeout is 120 s)
            server = launch_server(home, port)          # ... and comes back on its database
            ec.shutdown()
            with get_client(sync_client=True) as client:
                wait_for_record(client, recorder)
                flow_run = client.read_flow_run(recorder.flow_run_id)
                states = _wait_tasks(client, flow_run.id, 10 * 3 + 1)
            assert flow_run.state.is_completed()
            for guid in guids:
                for kind in ("deploy", "start", "release"):
                    assert states[f"{kind}-TestApp-{guid}"] == "COMPLETED"
    finally:
        stop_server(server)

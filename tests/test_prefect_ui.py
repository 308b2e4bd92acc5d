"""The Prefect UI shows a recorded experiment: rendered by headless Chromium, not assumed."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)
from tests.fixtures.prefect_api import wait_for_record

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("engine_types")]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # the machine has no network: without these Chromium keeps trying to reach Google
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000",
    # a window: the logs tab renders only the rows it has room for (none without one)
    "--window-size=1400,1000",
]


def recorded(recorder: PrefectRecorder) -> None:
    """Until the server has written the run's task runs: it writes them after it
    accepted them, and a page read before would show fewer."""
    with get_client(sync_client=True) as client:
        wait_for_record(client, recorder)


def render(url: str, profile: str) -> str:
    """The DOM of ``url`` after the page's scripts ran."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/setup"
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return done.stdout


def test_flow_run_page_shows_the_experiment(prefect_server, tmp_path):
    recorder = PrefectRecorder()
    ec = ExperimentController(exp_id=f"ui-{uuid.uuid4().hex[:6]}", local_dir=str(tmp_path),
                              recorder=recorder)
    try:
        first = ec.register_resource("TestApp")
        second = ec.register_resource("TestApp")
        ec.set(first, "duration", 0.1)
        ec.set(second, "duration", 0.1)
        ec.register_condition(second, ResourceAction.START, first, ResourceState.STARTED, "200ms")
        ec.deploy()
        ec.wait_finished([first, second])
    finally:
        ec.shutdown()
    flow_run_id = recorder.flow_run_id
    recorded(recorder)
    page = render(f"http://127.0.0.1:{prefect_server.port}/runs/flow-run/{flow_run_id}",
                  str(tmp_path / "chromium"))
    assert f"{ec.exp_id}-{ec.run_id}" in page      # the UI reached the API and found the run
    assert "Completed" in page
    # deploy, start, stop (each app finishes by itself) and release of each app, plus the
    # group barrier
    assert "9 Task runs" in page


def screenshot(url: str, profile: str, path: Path) -> Path:
    """A PNG of ``url`` after the page's scripts ran."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--hide-scrollbars", f"--screenshot={path}", url],
                   capture_output=True, text=True, timeout=120)
    return path


def test_failed_experiment_page_names_the_failed_resource(prefect_server, tmp_path):
    """A user opens the flow run of an experiment whose ``client`` failed: the page
    says Failed and shows the client's name and reason, in the logs of its failed run
    (the graph, where ``start-client`` is red, is a canvas: the screenshot shows it)."""
    recorder = PrefectRecorder()
    ec = ExperimentController(exp_id=f"ui-fail-{uuid.uuid4().hex[:6]}", local_dir=str(tmp_path),
                              recorder=recorder)
    try:
        server = ec.register_resource("TestApp", name="server")
        client = ec.register_resource("TestBroken", name="client")
        ec.set(server, "duration", 0.1)
        ec.set(client, "failIn", "start")
        ec.register_condition(client, ResourceAction.START, server, ResourceState.FINISHED)
        ec.deploy()
        ec.wait([server, client], timeout=60)
    finally:
        ec.shutdown()
    recorded(recorder)
    url = f"http://127.0.0.1:{prefect_server.port}/runs/flow-run/{recorder.flow_run_id}"
    page = render(url, str(tmp_path / "chromium"))
    assert f"{ec.exp_id}-{ec.run_id}" in page      # the UI reached the API and found the run
    assert "Failed" in page
    assert "client FAILED: RuntimeError: start exploded on purpose" in page
    # the log line is the failed task run's: its name is on the same row
    row = page[page.index("client FAILED: RuntimeError"):][:2000]
    assert "start-client" in row, row
    shot = screenshot(url, str(tmp_path / "chromium-shot"), tmp_path / "ui-failed-run.png")
    assert shot.stat().st_size > 10_000, "an empty screenshot"
    keep = os.environ.get("NEPI_PREFECT_SCREENSHOTS")   # docs/img, to refresh the docs
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)

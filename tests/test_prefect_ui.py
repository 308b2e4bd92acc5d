"""The Prefect UI shows a recorded experiment: rendered by headless Chromium, not assumed."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("engine_types")]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # the machine has no network: without these Chromium keeps trying to reach Google
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000",
]


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
    page = render(f"http://127.0.0.1:{prefect_server.port}/runs/flow-run/{flow_run_id}",
                  str(tmp_path / "chromium"))
    assert f"{ec.exp_id}-{ec.run_id}" in page      # the UI reached the API and found the run
    assert "Completed" in page
    # deploy, start, stop (each app finishes by itself) and release of each app, plus the
    # group barrier
    assert "9 Task runs" in page

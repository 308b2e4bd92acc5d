"""Whole scripts in subprocesses: a plain NEPI-style script, Ctrl-C.

The embedded default (no PREFECT_API_URL) is in test_prefect_local_server.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nepi_prefect.orchestration import replay

# real servers and processes on a possibly saturated machine: minutes, not seconds
pytestmark = [pytest.mark.prefect, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, time
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.resource import (ResourceFactory, ResourceManager,
                                                 ResourceState, clsinit_copy)

    @clsinit_copy
    class Plain(ResourceManager):
        _rtype = "ScriptPlain"

    ResourceFactory.register_type(Plain)
    ec = ExperimentController(exp_id=sys.argv[1])
    guids = [ec.register_resource("ScriptPlain") for _ in range(3)]
    ec.deploy()
    ec.wait(guids, states=(ResourceState.STARTED,), timeout=30)
    print("STARTED", flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
    ec.shutdown()
    print("FLOW_RUN", ec.recorder.flow_run_id, flush=True)
""")


def _env(base: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(base)
    env.pop("NEPI_PREFECT_RECORDER", None)   # the default recorder: Prefect
    env["NEPI_PREFECT_RESULTS"] = str(tmp_path / "results")
    env["PYTHONPATH"] = str(ROOT)
    return env


def _write_script(tmp_path: Path) -> Path:
    path = tmp_path / "experiment.py"
    path.write_text(SCRIPT)
    return path


def _flow_runs(client, exp_id: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[exp_id])))


@pytest.fixture
def client(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


def test_plain_script_gets_its_own_flow_run(prefect_server, client, tmp_path):
    exp_id = f"plain-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.run([sys.executable, str(_write_script(tmp_path)), exp_id, "run"],
                          env=_env(prefect_server.env, tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    [flow_run] = _flow_runs(client, exp_id)
    assert flow_run.state.is_completed()
    assert flow_run.name.startswith(exp_id)
    assert client.read_flow(flow_run.flow_id).name == "nepi-experiment"
    assert f"FLOW_RUN {flow_run.id}" in proc.stdout


def test_ctrl_c_without_shutdown_leaves_a_final_flow_run(prefect_server, client, tmp_path):
    exp_id = f"sigint-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, str(_write_script(tmp_path)), exp_id, "hang"],
                            env=_env(prefect_server.env, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "STARTED"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in err
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def settled():
        replay.flush()   # in case the exit did not wait for the server (a busy machine)
        found = _flow_runs(client, exp_id)
        if not found or not found[0].state.is_final():
            return None
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[found[0].id])))
        kinds = {r.name.split("-")[0] for r in runs}
        if kinds >= {"deploy", "start", "release"} and all(r.state.is_final() for r in runs):
            return found[0]
        return None

    deadline = time.monotonic() + 120   # the server ingests task runs asynchronously
    while (flow_run := settled()) is None:
        assert time.monotonic() < deadline, _flow_runs(client, exp_id)
        time.sleep(0.5)
    assert flow_run.state.is_cancelled(), flow_run.state
    assert "interrupted" in flow_run.state.message

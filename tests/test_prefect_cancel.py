"""Cancelling an experiment's flow run in Prefect (the UI's Cancel, or
``prefect flow-run cancel``) aborts the experiment: every resource is released, its
remote processes are killed, what was collected is kept, and the run ends Cancelled.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from tests.fixtures.prefect_api import nepi_cli
from tests.helpers import wait_until

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 300.0   # a saturated machine: generous, never a speed claim


def _sleeper(marker: str) -> str:
    """An app command that runs 600 s under a process whose command line holds ``marker``."""
    return f"sh -c 'sleep 600; true' {marker}"


def _description(tmp_path: Path, marker: str) -> Path:
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cancelme",
        "resources": [
            {"name": "node", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}},
            {"name": "sleeper", "rtype": "LinuxApplication",
             "attributes": {"command": f"echo begun; {_sleeper(marker)}"},
             "collect": ["stdout"]}],
        "connections": [["node", "sleeper"]],
        "wait_for": ["sleeper"],
        "timeout": "20m"}))
    return path


def _flow_run(api_url: str):
    """The experiment's flow run; None while there is none (or no server yet)."""
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["cancelme"])))
        except httpx.TransportError:
            return None
        return runs[0] if runs else None


def _running_marker(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def _cancel_when_running(run: subprocess.Popen, api_url: str, marker: str) -> str:
    """Once ``run``'s app and flow run are up, cancel the flow run as the UI's Cancel does;
    ``run``'s output once it has ended (it is killed if the test fails on the way)."""
    try:
        flow_run = wait_until(lambda: (fr := _flow_run(api_url)) and fr.state.is_running()
                              and _running_marker(marker) and fr,
                              timeout=DEADLINE, message="the run's app and its flow run")
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        return run.communicate(timeout=DEADLINE)[0]
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def _final_flow_run(api_url: str):
    return wait_until(lambda: (fr := _flow_run(api_url)) and fr.state.is_final() and fr,
                      timeout=DEADLINE, message="the flow run's final state")


def test_cancelling_the_flow_run_aborts_the_cli_run(local_home, tmp_path):
    marker = f"nepi-cancel-{uuid.uuid4().hex[:8]}"
    run = subprocess.Popen(nepi_cli() + ["run", str(_description(tmp_path, marker))],
                           env=local_home.env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output = _cancel_when_running(run, local_home.api_url, marker)
    assert run.returncode == 1, output
    assert "cancelled in Prefect" in output, output
    assert not _running_marker(marker), "the app outlived the cancelled experiment"
    ended = _final_flow_run(local_home.api_url)
    assert ended.state.is_cancelled(), ended.state
    assert "cancelled in Prefect" in (ended.state.message or "")
    stdout = list((tmp_path / "results").rglob("stdout"))
    assert stdout and "begun" in stdout[0].read_text()   # what was collected is kept


def test_cancelling_a_deployment_run_releases_the_experiment(prefect_server, tmp_path):
    """A deployment run's flow run is Prefect's own: its worker stops the process."""
    from prefect.deployments import run_deployment

    from nepi_prefect.flows.experiment import experiment_flow
    from nepi_prefect.flows.launchers import ensure_deployment
    from tests.fixtures.prefect_workers import create_pool, start_worker, stop_worker

    tag = uuid.uuid4().hex[:8]
    pool, marker = f"nepi-cancel-{tag}", f"nepi-cancel-app-{tag}"
    create_pool(prefect_server.env, pool)
    worker = start_worker(prefect_server.env, pool, "A", f"nepi-cancel-worker-{tag}",
                          tmp_path / "worker.log")
    try:
        deployment = ensure_deployment(experiment_flow, pool)
        desc = yaml.safe_load(_description(tmp_path, marker).read_text())
        flow_run = run_deployment(deployment, parameters={"description": desc,
                                                          "results_dir": str(tmp_path / "results")},
                                  timeout=0)
        with get_client(sync_client=True) as client:
            wait_until(lambda: client.read_flow_run(flow_run.id).state.is_running()
                       and _running_marker(marker), timeout=DEADLINE,
                       message=lambda: (tmp_path / "worker.log").read_text()[-3000:])
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            ended = wait_until(lambda: (fr := client.read_flow_run(flow_run.id)).state.is_final()
                               and fr, timeout=DEADLINE,
                               message=lambda: (tmp_path / "worker.log").read_text()[-3000:])
        assert ended.state.is_cancelled(), ended.state
        wait_until(lambda: not _running_marker(marker), timeout=60,
                   message="the app outlived the cancelled deployment run")
    finally:
        stop_worker(worker, f"nepi-cancel-worker-{tag}")
        subprocess.run(["pkill", "-f", marker], capture_output=True)


SCRIPT = """
import sys
from nepi_prefect.execution.ec import ExperimentController

ec = ExperimentController(exp_id="cancelme")
node = ec.register_resource("LinuxNode", name="node")
ec.set(node, "hostname", "localhost")
app = ec.register_resource("LinuxApplication", name="sleeper")
ec.set(app, "command", sys.argv[1])
ec.register_connection(node, app)
ec.deploy()
ec.wait_finished([app])
ec.shutdown()
print("ENDED", ec.ecstate.name, ec.failure, flush=True)
"""


def test_cancelling_the_flow_run_aborts_a_plain_script(local_home, tmp_path):
    marker = f"nepi-cancel-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "experiment.py"
    script.write_text(SCRIPT)
    run = subprocess.Popen([sys.executable, str(script), _sleeper(marker)],
                           env=local_home.env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output = _cancel_when_running(run, local_home.api_url, marker)
    assert "ENDED TERMINATED cancelled in Prefect" in output, output   # and not COMPLETED
    assert not _running_marker(marker), "the app outlived the cancelled experiment"
    ended = _final_flow_run(local_home.api_url)
    assert ended.state.is_cancelled(), ended.state

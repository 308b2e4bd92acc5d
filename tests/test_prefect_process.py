"""Whole scripts in subprocesses: a plain NEPI-style script, Ctrl-C, the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.prefect

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
    [flow_run] = _flow_runs(client, exp_id)
    assert flow_run.state.is_cancelled(), flow_run.state
    assert "interrupted" in flow_run.state.message
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert {r.name.split("-")[0] for r in runs} >= {"deploy", "start", "release"}
    assert all(r.state.is_final() for r in runs)


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _uvicorn_for(home: Path) -> list[int]:
    """Processes of an ephemeral API server started with this PREFECT_HOME."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
            environ = (proc_dir / "environ").read_bytes()
        except OSError:
            continue
        if b"uvicorn" in cmdline and f"PREFECT_HOME={home}".encode() in environ:
            pids.append(int(proc_dir.name))
    return pids


def test_embedded_default_records_quietly_and_leaves_no_server(tmp_path):
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env = _env(env, tmp_path)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    exp_id = "embedded-exp"
    proc = subprocess.run([sys.executable, str(_write_script(tmp_path)), exp_id, "run"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    for alarming in ("Traceback", "database is locked", "Error", "WARNING"):
        assert alarming not in output, output
    assert (home / "prefect.db").exists()
    assert not _uvicorn_for(home), "the ephemeral API server outlived its process"

    # The record is in the embedded database: read it through a fresh ephemeral server.
    reader = textwrap.dedent(f"""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["{exp_id}"])))
            print("STATES", [r.state.type.value for r in runs])
            print("TASKS", len(c.read_task_runs(flow_run_filter=FlowRunFilter(id=dict(any_=[runs[0].id])))))
    """)
    check = subprocess.run([sys.executable, "-c", reader], env=env, capture_output=True,
                           text=True, timeout=120)
    assert "STATES ['COMPLETED']" in check.stdout, check.stdout + check.stderr
    tasks = int(check.stdout.split("TASKS")[1].split()[0])
    assert tasks == 3 * 3 + 1   # deploy, start, release of 3 RMs, and the group barrier

"""``ExperimentController.attach`` and ``nepi-prefect attach RUN``: a controller SIGKILLed
while its apps run on a real loopback sshd; a new process takes the run over, follows
the apps to their end, collects their traces into the run directory, releases them
(nothing left on the host, a setsid daemon included) and writes summary.json."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import pytest

from nepi_prefect.cli import main
from nepi_prefect.commands import attach as attach_command
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import ExperimentStateError, InvalidInputError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.orchestration import replay
from tests.fixtures.crashed import kill_controller, pgrep, start_controller, wait_gone
from tests.faults import common as fault
from tests.fixtures.sshd import kill_for_good, node_attrs, restart_sshd, start_sshd
from tests.helpers import until_file_command, wait_until

pytestmark = pytest.mark.ssh


def hold(name: str, seconds: float, go: Path | None) -> str:
    """A command that runs as ``name`` for ``seconds``, or until ``go`` exists."""
    if go is None:
        return f"exec -a {name} sleep {seconds}"
    return f"exec -a {name} bash -c {shlex.quote(until_file_command(go, seconds))}"


def crash_commands(marker: str, seconds: float = 4, go: Path | None = None) -> list[str]:
    """Three apps that print, then run a while under the marker (``seconds``, or until
    the file ``go`` exists); the last one also leaves a setsid daemon (only a release
    kills it)."""
    return [f"echo hello-0; {hold(f'{marker}-0', seconds, go)}",
            f"echo hello-1; echo oops-1 >&2; {hold(f'{marker}-1', seconds, go)}",
            f"(setsid bash -c 'exec -a {marker}-daemon sleep 300' &); echo hello-2; "
            f"{hold(f'{marker}-2', seconds, go)}"]


def crashed_run(sshd, tmp_path, marker: str, seconds: float = 4, env: dict | None = None,
                go: Path | None = None) -> str:
    """A run whose controller was SIGKILLed while its 3 apps (and a daemon) run."""
    attrs = node_attrs(sshd, home=str(tmp_path / "home"))
    proc, run_dir = start_controller(attrs, crash_commands(marker, seconds, go),
                                     str(tmp_path / "results"), env=env)
    wait_until(lambda: len(pgrep(marker)) == 4, timeout=30, message=lambda: str(pgrep(marker)))
    kill_controller(proc)
    assert len(pgrep(marker)) == 4  # the crash left them all running
    return run_dir


def check_attached_run(run_dir: str, marker: str) -> dict:
    """summary.json says COMPLETED, every app FINISHED, traces in the run dir, no process."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["state"] == "COMPLETED", summary.get("failure")
    apps = [r for r in summary["resources"] if r["rtype"] == "LinuxApplication"]
    assert [r["state"] for r in apps] == ["FINISHED"] * 3, apps
    assert not [r for r in summary["resources"] if r["failure"]], summary["resources"]
    for i, app in enumerate(apps):
        stdout = app["traces"]["stdout"]
        assert stdout.startswith(run_dir) and open(stdout).read() == f"hello-{i}\n"
        assert open(app["traces"]["exitcode"]).read().strip() == "0"
    assert open(apps[1]["traces"]["stderr"]).read() == "oops-1\n"
    wait_gone(marker)  # the daemon too: the release killed it
    return summary


def test_attach_follows_a_killed_run_to_its_end(sshd, tmp_path):
    marker = f"nepi-attach-{os.urandom(4).hex()}"
    try:
        # the apps run until the test has seen them re-attached (120 s at most), however
        # long the crash and the attach take on a loaded machine
        go = tmp_path / "go"
        run_dir = crashed_run(sshd, tmp_path, marker, seconds=120, go=go)
        ec = ExperimentController.attach(run_dir, recorder=Recorder())
        apps = [g for g in ec.resources if ec.get_resource(g).get_rtype() == "LinuxApplication"]
        assert [ec.state(a, hr=True) for a in apps] == ["STARTED"] * 3
        go.touch()
        started = time.monotonic()
        assert ec.wait_finished(apps, timeout=60)
        waited = time.monotonic() - started
        assert pgrep(marker) == [f for f in pgrep(marker) if "daemon" in f]  # apps ended
        ec.shutdown()
        check_attached_run(run_dir, marker)
        state = json.load(open(os.path.join(run_dir, "run-state.json")))
        assert state["ecstate"] == "TERMINATED" and state["pid"] == os.getpid()
        assert waited < 60
        # the run ended: a second attach is refused, naming why
        with pytest.raises(ExperimentStateError, match="ended normally"):
            ExperimentController.attach(run_dir, recorder=Recorder())
    finally:
        os.system(f"pkill -KILL -f {marker}")  # only this test's marker


def test_attach_cli_follows_and_reports(sshd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEPI_PREFECT_RECORDER", "none")
    marker = f"nepi-attach-{os.urandom(4).hex()}"
    try:
        go = tmp_path / "go"
        run_dir = crashed_run(sshd, tmp_path, marker, seconds=120, go=go)

        def print_then_go(*args, **kwargs):
            """The apps end once the CLI has said how many it re-attached."""
            print(*args, **kwargs)
            if any("re-attached" in str(a) for a in args):
                go.touch()

        monkeypatch.setattr(attach_command, "print", print_then_go, raising=False)
        assert main(["attach", run_dir, "--timeout", "100"]) == 0
        out = capsys.readouterr().out
        assert "re-attached 3 application(s) still running" in out, out
        assert "experiment COMPLETED" in out, out
        check_attached_run(run_dir, marker)
    finally:
        os.system(f"pkill -KILL -f {marker}")


def test_attach_cli_timeout_stops_the_apps(sshd, tmp_path, capsys, monkeypatch):
    """Apps that would run 300 s: ``--timeout 2`` stops them, the run ends FAILED
    saying why (exit 1), the traces so far are kept and nothing is left on the host."""
    monkeypatch.setenv("NEPI_PREFECT_RECORDER", "none")
    marker = f"nepi-attach-{os.urandom(4).hex()}"
    try:
        run_dir = crashed_run(sshd, tmp_path, marker, seconds=300)
        started = time.monotonic()
        assert main(["attach", run_dir, "--timeout", "2"]) == 1
        assert time.monotonic() - started < 60
        out = capsys.readouterr().out
        assert "still running after 2 s" in out, out
        wait_gone(marker)
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        assert summary["state"] == "FAILED" and "attach" in summary["failure"], summary["failure"]
        # the traces up to then are kept
        app = next(r for r in summary["resources"] if r["rtype"] == "LinuxApplication")
        assert open(app["traces"]["stdout"]).read() == "hello-0\n"
    finally:
        os.system(f"pkill -KILL -f {marker}")


def test_attach_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match="no readable run-state.json"):
        ExperimentController.attach(str(tmp_path / "nope"), recorder=Recorder())
    (tmp_path / "run-state.json").write_text(json.dumps({"pid": os.getppid(), "resources": []}))
    with pytest.raises(ExperimentStateError, match="still runs"):
        ExperimentController.attach(str(tmp_path), recorder=Recorder())
    assert main(["attach", str(tmp_path / "nope")]) == 2


def _flow_runs(exp_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[exp_id])), limit=10)


def _task_run_states(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
    return [r.state.type.value for r in runs if r.state is not None]


@pytest.mark.prefect
@pytest.mark.timeout(900)
@pytest.mark.parametrize("flushed", [False, True], ids=["journal-orphan", "closed-crashed"])
def test_attach_closes_the_killed_runs_flow_run(sshd, tmp_path, capsys, prefect_server,
                                                monkeypatch, flushed):
    """The killed controller recorded into a real Prefect server; attach continues that
    flow run (no second one) and ends it Completed, read back through Prefect's client:
    from its orphaned journal, or after a flush closed it Crashed."""
    monkeypatch.delenv("NEPI_PREFECT_RECORDER", raising=False)
    exp_id = f"attach-prefect-{os.urandom(3).hex()}"
    marker = f"nepi-attach-{os.urandom(4).hex()}"
    attrs = node_attrs(sshd, home=str(tmp_path / "home"))
    env = {k: v for k, v in prefect_server.env.items() if k != "NEPI_PREFECT_RECORDER"}
    proc, run_dir = start_controller(attrs, crash_commands(marker), str(tmp_path / "results"),
                                     exp_id=exp_id, env={**env, "NEPI_PREFECT_RECORDER": "prefect"})
    try:
        # the controller's flow run is on the server, Running
        runs = wait_until(lambda: _flow_runs(exp_id), timeout=120)
        assert runs[0].state.type.value == "RUNNING"
        kill_controller(proc)
        if flushed:  # another process shipped the orphan first: the flow run is Crashed
            replay.flush()
            wait_until(lambda: _flow_runs(exp_id)[0].state.type.value == "CRASHED", timeout=120)
        assert main(["attach", run_dir, "--timeout", "120"]) == 0
        assert "experiment COMPLETED" in capsys.readouterr().out
        check_attached_run(run_dir, marker)
        final = wait_until(lambda: [r for r in _flow_runs(exp_id)
                                    if r.state.type.value != "RUNNING"], timeout=120)
        assert len(_flow_runs(exp_id)) == 1 and final[0].id == runs[0].id  # the same run
        assert final[0].state.type.value == "COMPLETED", final[0].state
        # every task run of it ended: the dead controller's and attach's own
        assert wait_until(lambda: _task_run_states(final[0].id) and all(
            s in ("COMPLETED", "CRASHED") for s in _task_run_states(final[0].id)), timeout=120)
    finally:
        kill_controller(proc)
        os.system(f"pkill -KILL -f {marker}")


def test_attach_to_a_dead_host_fails_and_the_next_run_there_cleans(tmp_path, monkeypatch):
    """The host died too: attach returns at once with the node and apps FAILED, naming
    the host; once it is back, the next run on it kills what the run left."""
    hostruns = str(tmp_path / "host-runs")
    monkeypatch.setenv("NEPI_PREFECT_LOST_RUNS", hostruns)
    (tmp_path / "sshd").mkdir()
    server = start_sshd(str(tmp_path / "sshd"))
    marker = f"nepi-attach-{os.urandom(4).hex()}"
    try:
        run_dir = crashed_run(server, tmp_path, marker, seconds=300,
                              env={"NEPI_PREFECT_LOST_RUNS": hostruns})
        kill_for_good(server)
        with fault.bounded(60, "attach to a dead host"):
            ec = ExperimentController.attach(run_dir, recorder=Recorder())
            assert ec.wait_finished(ec.end_guids(), timeout=60)
            ec.shutdown()
        summary = fault.summary_on_disk(run_dir)
        assert summary["state"] == "FAILED", summary
        node = summary["resources"][0]
        assert "host unreachable" in node["failure"] and str(server.port) in node["failure"]
        apps = [r for r in summary["resources"] if r["rtype"] == "LinuxApplication"]
        assert all("could not be re-attached" in r["failure"] for r in apps), apps
        assert len(pgrep(marker)) == 4  # out of reach
        restart_sshd(server)
        nxt = ExperimentController(exp_id="next", local_dir=str(tmp_path / "results"),
                                   recorder=Recorder())
        try:
            node = fault.node_on(nxt, node_attrs(server, home=str(tmp_path / "home")))
            nxt.deploy()
            assert nxt.wait_deployed([node], timeout=60)
            fault.no_process_left(marker)
        finally:
            nxt.shutdown()
    finally:
        os.system(f"pkill -KILL -f {marker}")
        server.stop()

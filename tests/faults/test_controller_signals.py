"""The controller interrupted (SIGINT: it releases everything and its run ends
Cancelled) or killed (SIGKILL: the next run on the host with ``cleanProcesses``
kills what it left, and nothing of a run whose controller lives)."""

from __future__ import annotations

import signal
import subprocess

import pytest

from nepi_prefect.orchestration import replay
from tests.faults import common as fault
from tests.fixtures.crashed import kill_controller, pgrep, start_controller
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.prefect, pytest.mark.timeout(900)]


def _commands(marker: str, tag: str = "") -> list[str]:
    return [f"echo hello-{i}; exec -a {marker}{tag}-{i} sleep 300" for i in range(3)]


def _recording(prefect_server) -> dict:
    env = {k: v for k, v in prefect_server.env.items() if k != "NEPI_PREFECT_RECORDER"}
    return {**env, "NEPI_PREFECT_RECORDER": "prefect"}


def test_sigint_releases_everything_and_the_run_ends_cancelled(sshd, tmp_path, prefect_server):
    marker = fault.new_marker("sigint")
    exp_id = f"fault-sigint-{marker[-8:]}"
    proc, run_dir = start_controller(node_attrs(sshd, home=str(tmp_path / "home")),
                                     _commands(marker), str(tmp_path / "results"), exp_id=exp_id,
                                     env=_recording(prefect_server))
    try:
        # STARTED (the controller's "started") can come before each app's exec
        wait_until(lambda: len(pgrep(marker)) == 3, timeout=30, message=lambda: str(pgrep(marker)))
        proc.send_signal(signal.SIGINT)
        with fault.bounded(150, "the interrupted controller's exit"):
            proc.wait(150)
        fault.no_process_left(marker)
        summary = fault.summary_on_disk(run_dir)
        assert summary["state"] == "FAILED" and "abandoned" in summary["failure"], summary
        apps = [r for r in summary["resources"] if r["rtype"] == "LinuxApplication"]
        for i, app in enumerate(apps):  # stdout up to the interrupt was collected
            assert open(app["traces"]["stdout"]).read() == f"hello-{i}\n"
        state, message = fault.prefect_final(exp_id)
        assert state == "CANCELLED", (state, message)
    finally:
        kill_controller(proc)


def test_the_next_run_kills_what_a_sigkilled_controller_left(sshd, tmp_path, prefect_server,
                                                             monkeypatch):
    """Controller A SIGKILLed, controller B alive, both on the same host and home: a next
    run with cleanProcesses kills A's processes (a setsid daemon included), not B's."""
    monkeypatch.setenv("NEPI_PREFECT_LOST_RUNS", str(tmp_path / "host-runs"))
    marker = fault.new_marker("sigkill")
    attrs = node_attrs(sshd, home=str(tmp_path / "home"))
    env = {**_recording(prefect_server), "NEPI_PREFECT_LOST_RUNS": str(tmp_path / "host-runs")}
    commands = _commands(marker, "a") + [
        f"(setsid bash -c 'exec -a {marker}a-daemon sleep 300' &); exec -a {marker}a-3 sleep 300"]
    killed, _ = start_controller(attrs, commands, str(tmp_path / "results"),
                                 exp_id=f"fault-killed-{marker[-8:]}", env=env)
    alive, _ = start_controller(attrs, _commands(marker, "b"), str(tmp_path / "results"),
                                exp_id=f"fault-alive-{marker[-8:]}", env=env)
    def of(run: str) -> list[str]:
        return [p for p in pgrep(marker) if f"{marker}{run}-" in p]

    try:
        # STARTED can come before each app's exec (and A's daemon)
        wait_until(lambda: len(of("a")) == 5 and len(of("b")) == 3, timeout=30,
                   message=lambda: str(pgrep(marker)))
        kill_controller(killed)
        assert len(of("a")) == 5
        replay.flush()  # the killed controller's record: shipped, Crashed
        assert fault.prefect_final(f"fault-killed-{marker[-8:]}")[0] == "CRASHED"

        ec, exp_id = fault.recorded_ec("fault-next", str(tmp_path / "results"))
        node = fault.node_on(ec, {**attrs, "cleanProcesses": True})
        app = fault.app_on(ec, node, "echo next")
        try:
            ec.deploy()
            with fault.bounded(60, "the next run"):
                assert ec.wait_finished([app], timeout=60)
        finally:
            ec.shutdown()
        fault.no_process_left(f"{marker}a-")
        assert len(of("b")) == 3  # B's run lives on
        summary = fault.summary_on_disk(ec.run_dir)
        assert summary["state"] == "COMPLETED"
        assert open(summary["resources"][1]["traces"]["stdout"]).read() == "next\n"
        assert fault.prefect_final(exp_id)[0] == "COMPLETED"
    finally:
        kill_controller(killed)
        kill_controller(alive)
        subprocess.run(["pkill", "-KILL", "-f", marker])  # only this test's marker

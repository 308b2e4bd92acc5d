"""A controller SIGKILLed while its apps run (one of them started a daemon in its own
session): ``nepi-prefect cleanup RUN`` finds them from the run-state file and the
pid files on the host, and kills every one."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from nepi_prefect.cli import main
from nepi_prefect.orchestration import replay
from tests.faults import common as fault
from tests.fixtures.crashed import kill_controller, pgrep, start_controller, wait_gone
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

pytestmark = pytest.mark.ssh


@pytest.mark.parametrize("recorded", [False, pytest.param(True, marks=pytest.mark.prefect)],
                         ids=["engine-only", "recorded"])
def test_cleanup_kills_what_a_sigkilled_controller_left(sshd, tmp_path, capsys, request,
                                                        recorded):
    """Recorded: the killed run's flow run ends Crashed once its journal is shipped;
    cleanup finishes nothing (no summary.json: ``attach`` does that)."""
    marker = f"nepi-crash-{os.urandom(4).hex()}"
    exp_id = f"crashed-{marker[-8:]}"
    env = {}
    if recorded:
        server = request.getfixturevalue("prefect_server")
        env = {**{k: v for k, v in server.env.items() if k != "NEPI_PREFECT_RECORDER"},
               "NEPI_PREFECT_RECORDER": "prefect"}
    commands = [f"exec -a {marker}-0 sleep 300", f"exec -a {marker}-1 sleep 300",
                f"(setsid bash -c 'exec -a {marker}-daemon sleep 300' &); "
                f"exec -a {marker}-2 sleep 300"]
    proc, run_dir = start_controller(node_attrs(sshd, home=str(tmp_path / "home")), commands,
                                     str(tmp_path / "results"), exp_id=exp_id, env=env)
    try:
        assert wait_until(lambda: len(pgrep(marker)) == 4, timeout=30), pgrep(marker)
        kill_controller(proc)
        assert len(pgrep(marker)) == 4  # the crash left them all running

        assert main(["cleanup", run_dir]) == 0
        out = capsys.readouterr().out
        assert "killed" in out and "of 3 of 3 app(s)" in out, out
        wait_gone(marker)
        # a second cleanup finds nothing left
        assert main(["cleanup", run_dir]) == 0
        assert "killed 0 process(es) of 0 of 3 app(s)" in capsys.readouterr().out
        assert not os.path.exists(os.path.join(run_dir, "summary.json"))
        if recorded:
            replay.flush()
            assert fault.prefect_final(exp_id)[0] == "CRASHED"
    finally:
        kill_controller(proc)
        subprocess.run(["pkill", "-KILL", "-f", marker])  # only this test's marker


def test_cleanup_refuses_a_run_without_state_and_a_live_controller(tmp_path, capsys):
    assert main(["cleanup", str(tmp_path / "nope")]) == 2
    assert "no readable run-state.json" in capsys.readouterr().out
    (tmp_path / "run-state.json").write_text(json.dumps({"pid": os.getpid(), "resources": []}))
    assert main(["cleanup", str(tmp_path)]) == 2
    assert f"pid {os.getpid()}) still runs" in capsys.readouterr().out

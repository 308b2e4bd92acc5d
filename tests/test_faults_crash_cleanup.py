"""A controller SIGKILLed while its apps run (one of them started a daemon in its own
session): ``nepi-prefect cleanup RUN`` finds them from the run-state file and the
pid files on the host, and kills every one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nepi_prefect.cli import main
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

pytestmark = pytest.mark.ssh
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONTROLLER = textwrap.dedent("""
    import json, os, sys, time
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.recording import Recorder
    attrs, marker, results = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    ec = ExperimentController(exp_id="crashed", local_dir=results, recorder=Recorder())
    node = ec.register_resource("LinuxNode")
    for k, v in attrs.items():
        ec.set(node, k, v)
    apps = []
    for cmd in (f"exec -a {marker}-0 sleep 300", f"exec -a {marker}-1 sleep 300",
                f"(setsid bash -c 'exec -a {marker}-daemon sleep 300' &); "
                f"exec -a {marker}-2 sleep 300"):
        app = ec.register_resource("LinuxApplication")
        ec.set(app, "command", cmd)
        ec.register_connection(app, node)
        apps.append(app)
    ec.deploy()
    assert ec.wait_started(apps, timeout=120)
    path = os.path.join(ec.run_dir, "run-state.json")
    while True:  # until the run-state file has caught up with the apps
        try:
            with open(path) as f:
                rms = json.load(f)["resources"]
            if all(r["state"] == "STARTED" and r.get("run_home") for r in rms if r["guid"] in apps):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    print(ec.run_dir, flush=True)
    time.sleep(600)
""")


def _pgrep(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    # the apps are named "<marker>-i" (exec -a); the controller only has it in its argv
    return [line for line in out.splitlines() if line.split(" ", 1)[-1].startswith(marker)]


def test_cleanup_kills_what_a_sigkilled_controller_left(sshd, tmp_path, capsys):
    marker = f"nepi-crash-{os.urandom(4).hex()}"
    attrs = node_attrs(sshd, home=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-c", CONTROLLER, json.dumps(attrs), marker,
                             str(tmp_path / "results")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, NEPI_PREFECT_RECORDER="none"))
    try:
        run_dir = proc.stdout.readline().strip()
        assert run_dir, "the controller did not start its apps"
        assert wait_until(lambda: len(_pgrep(marker)) == 4, timeout=30), _pgrep(marker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert len(_pgrep(marker)) == 4  # the crash left them all running

        assert main(["cleanup", run_dir]) == 0
        out = capsys.readouterr().out
        assert "killed" in out and "of 3 of 3 app(s)" in out, out
        assert wait_until(lambda: _pgrep(marker) == [], timeout=30), _pgrep(marker)
        # a second cleanup finds nothing left
        assert main(["cleanup", run_dir]) == 0
        assert "killed 0 process(es) of 0 of 3 app(s)" in capsys.readouterr().out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["pkill", "-KILL", "-f", marker])  # only this test's marker


def test_cleanup_refuses_a_run_without_state_and_a_live_controller(tmp_path, capsys):
    assert main(["cleanup", str(tmp_path / "nope")]) == 2
    assert "no readable run-state.json" in capsys.readouterr().out
    (tmp_path / "run-state.json").write_text(json.dumps({"pid": os.getpid(), "resources": []}))
    assert main(["cleanup", str(tmp_path)]) == 2
    assert f"pid {os.getpid()}) still runs" in capsys.readouterr().out

"""The Prefect server killed (SIGKILL) while apps run on a real host: the apps finish
on time, their traces are collected, nothing is left on the host, and once the server
is back on its database the run's flow run ends Completed. (The record's own side, task
run by task run, is ``tests/test_prefect_resilience.py``.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.faults import common as fault
from tests.fixtures.prefect_api import free_port, launch_server, server_home, stop_server
from tests.fixtures.sshd import node_attrs

pytestmark = [pytest.mark.ssh, pytest.mark.prefect, pytest.mark.timeout(1200)]


def test_prefect_server_killed_mid_run(sshd, tmp_path, monkeypatch):
    home = server_home("nepi-prefect-fault-")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    server = launch_server(home, port)
    marker = fault.new_marker("prefect")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            ec, exp_id = fault.recorded_ec("fault-prefect", str(tmp_path / "results"))
            node = fault.node_on(ec, node_attrs(sshd, home=str(tmp_path / "home")))
            apps = [fault.app_on(ec, node, f"echo out-{i}; exec -a {marker}-{i} sleep 4")
                    for i in range(3)]
            ec.deploy()
            assert ec.wait_started(apps, timeout=60)
            stop_server(server, kill=True)  # the API dies mid-experiment
            with fault.bounded(60, "the apps' end with the API dead"):
                assert ec.wait_finished(apps, timeout=90)
            server = launch_server(home, port)  # ... and comes back on its database
            with fault.bounded(240, "shutdown"):
                ec.shutdown()
            fault.no_process_left(marker)
            summary = fault.summary_on_disk(ec.run_dir)
            assert summary["state"] == "COMPLETED", summary["failure"]
            outputs = [open(r["traces"]["stdout"]).read() for r in summary["resources"]
                       if r["rtype"] == "LinuxApplication"]
            assert outputs == [f"out-{i}\n" for i in range(3)]
            assert fault.prefect_final(exp_id)[0] == "COMPLETED"
    finally:
        stop_server(server)
        os.system(f"pkill -KILL -f {marker}")

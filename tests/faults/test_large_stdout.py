"""An app printing 30 MiB: the trace is collected whole into the run directory,
the run ends COMPLETED in summary.json and in Prefect, and nothing is left on the
host. (The controller's memory for 50 MiB is ``tests/test_trace_memory.py``.)"""

from __future__ import annotations

import os

import pytest

from tests.faults import common as fault
from tests.fixtures.sshd import node_attrs

pytestmark = [pytest.mark.ssh, pytest.mark.prefect, pytest.mark.timeout(600)]
SIZE = 30 * 1024 * 1024


def test_a_large_stdout_is_collected_whole(sshd, tmp_path, prefect_server):
    marker = fault.new_marker("big")
    ec, exp_id = fault.recorded_ec("fault-bigout", str(tmp_path / "results"))
    node = fault.node_on(ec, node_attrs(sshd, home=str(tmp_path / "home")))
    app = fault.app_on(ec, node, f"exec -a {marker}-0 head -c {SIZE} /dev/urandom")
    try:
        ec.deploy()
        with fault.bounded(120, "the app's end"):
            assert ec.wait_finished([app], timeout=180)
    finally:
        with fault.bounded(180, "shutdown (collecting 30 MiB)"):
            ec.shutdown()
    fault.no_process_left(marker)
    summary = fault.summary_on_disk(ec.run_dir)
    assert summary["state"] == "COMPLETED", summary
    path = next(r for r in summary["resources"] if r["guid"] == app)["traces"]["stdout"]
    remote = os.path.join(str(tmp_path / "home"), ".nepi-prefect", "exp", exp_id, ec.run_id,
                          f"LinuxApplication-{app}", "stdout")
    assert os.path.getsize(path) == os.path.getsize(remote) == SIZE
    with open(path, "rb") as local, open(remote, "rb") as there:
        assert local.read() == there.read()  # no byte lost or changed
    assert fault.prefect_final(exp_id)[0] == "COMPLETED"

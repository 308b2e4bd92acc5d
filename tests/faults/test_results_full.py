"""The results directory on a full filesystem (a 64 KiB tmpfs of the test's own):
the small trace is kept, the big one is named as lost, summary.json says INCOMPLETE,
Prefect says Failed (results lost), and nothing is left on the host."""

from __future__ import annotations

import os

import pytest

from tests.faults import common as fault
from tests.fixtures.sshd import node_attrs
from tests.test_results_atomic import BIG, tmpfs  # noqa: F401  (tmpfs: the fixture)

pytestmark = [pytest.mark.ssh, pytest.mark.prefect, pytest.mark.timeout(600)]


def test_a_full_results_directory(sshd, tmpfs, tmp_path, prefect_server):  # noqa: F811
    marker = fault.new_marker("full")
    ec, exp_id = fault.recorded_ec("fault-full", str(tmpfs))
    node = fault.node_on(ec, node_attrs(sshd, home=str(tmp_path / "home")))
    small = fault.app_on(ec, node, f"echo kept; exec -a {marker}-s sleep 1")
    big = fault.app_on(ec, node, f"head -c {BIG} /dev/zero | tr '\\0' x; exec -a {marker}-b sleep 1")
    try:
        ec.deploy()
        with fault.bounded(60, "the apps' end"):
            assert ec.wait_finished([small, big], timeout=90)
        # The small trace is collected first: collected at the same moment as the big
        # one, it could find the tmpfs filled by the big one's temporary file.
        ec.release([fault.collector_of(ec, small)])
    finally:
        with fault.bounded(120, "shutdown"):
            ec.shutdown()
    fault.no_process_left(marker)
    summary = fault.summary_on_disk(ec.run_dir)
    assert summary["state"] == "INCOMPLETE", summary
    assert [line for line in summary["lost"] if f"LinuxApplication {big}" in line], summary["lost"]
    rows = {r["guid"]: r for r in summary["resources"]}
    assert open(rows[small]["traces"]["stdout"]).read() == "kept\n"
    assert not [p for p in os.listdir(ec.run_dir) if ".tmp-" in p]
    state, message = fault.prefect_final(exp_id)
    assert state == "FAILED" and "results lost" in message, message

"""A campaign on a work pool: two process workers on loopback against one Prefect server
both run points; killing one mid-campaign leaves its points to be run again, not lost."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from nepi_prefect.results.campaign import campaign_frame
from nepi_prefect.results.store import CampaignStore
from nepi_prefect.spec.models import ExperimentDescription
from tests.helpers import wait_until
from tests.fixtures.prefect_workers import (create_pool, flow_run_of, kill_marked, marked, start_worker,
                                            stop_worker)

# Longer than the minute for which the shared test server's SQLite can stay locked under
# load ("database is locked" after its 60 s busy timeout): a shorter lease expired while
# the points were starting, the controller launched them again, and the worker slots were
# all held by the first attempts, which wait for the release file
LEASE = "90"

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(1800)]


def _rows(tmp_path: Path, name: str) -> list[dict]:
    try:
        store = CampaignStore.open(name, str(tmp_path), create=False)
    except FileNotFoundError:
        return []
    try:
        return store.runs()
    finally:
        store.close()


def test_two_workers_share_a_campaign_and_a_killed_one_loses_nothing(prefect_server, tmp_path,
                                                                      monkeypatch):
    from nepi_prefect.flows.sweep import sweep_flow

    monkeypatch.setenv("NEPI_PREFECT_CAMPAIGN_LEASE", LEASE)
    run_tag = uuid.uuid4().hex[:8]
    pool, name = f"nepi-camp-{run_tag}", f"pool-{run_tag}"
    markers = {label: f"nepi-i12-{run_tag}-{label}" for label in ("A", "B")}
    create_pool(prefect_server.env, pool)
    workers = {label: start_worker(prefect_server.env, pool, label, m,
                                   tmp_path / f"worker-{label}.log", lease=LEASE, limit=2)
               for label, m in markers.items()}
    desc = ExperimentDescription.model_validate({"name": "pooled", "resources": [
        {"name": "node", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}},
        {"name": "app", "rtype": "LinuxApplication", "attributes": {"command": "true"}}],
        "connections": [["node", "app"]]})
    # Every point waits for the release file: nothing ends before worker A is killed, so A is
    # surely in the middle of its points when it dies.
    release = tmp_path / "release"
    grid = {"app.command": [f"while [ ! -e {release} ]; do sleep 0.2; done; echo {i}"
                            for i in range(6)]}
    result: dict = {}

    def sweep() -> None:
        result["state"] = sweep_flow(description=desc, grid=grid, max_concurrency=4,
                                     results_dir=str(tmp_path), campaign=name, work_pool=pool,
                                     return_state=True)

    def running_on(label: str) -> set[tuple[str, int]]:
        """(point, rep) of the campaign's running runs whose flow run is a process of ``label``."""
        flow_runs = {flow_run_of(pid) for pid in marked(markers[label])} - {None}
        return {(r["point"], r["rep"]) for r in _rows(tmp_path, name)
                if r["state"] == "running" and r["flow_run_id"] in flow_runs}

    # a daemon: if the test fails with the sweep still going, pytest must still exit
    thread = threading.Thread(target=sweep, name="pooled-sweep", daemon=True)
    try:
        thread.start()
        # Both workers hold points at once (each at most 2), then A dies in the middle of its.
        wait_until(lambda: running_on("A") and running_on("B"), 600, "points running on A and on B")
        lost = running_on("A")
        os.killpg(workers["A"].pid, signal.SIGKILL)
        kill_marked(markers["A"])
        workers["A"].wait(timeout=30)
        release.touch()
        thread.join(timeout=1200)
        assert not thread.is_alive(), "the sweep did not end"
        state = result["state"]
        assert state.is_completed(), state.message
        frame = campaign_frame(name, str(tmp_path))
        assert len(frame) == 6 and (frame["state"] == "done").all(), \
            frame[["state", "attempt", "worker", "error"]].to_string()
        assert set(frame["worker"]) == {"B"}   # A died before finishing anything
        again = frame[[(p, r) in lost for p, r in zip(frame["point"], frame["rep"])]]
        assert len(again) == len(lost) and (again["attempt"] >= 2).all(), \
            frame[["state", "attempt", "worker", "error"]].to_string()
        assert frame["flow_run_id"].notna().all()
    finally:
        release.touch()   # whatever happened, no point waits forever
        for label, proc in workers.items():
            stop_worker(proc, markers[label])
        thread.join(timeout=60)
    wait_until(lambda: not any(marked(m) for m in markers.values()), 30, "no worker process left")

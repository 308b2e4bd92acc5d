"""A campaign on a work pool: two process workers on loopback against one Prefect server
both run points; killing one mid-campaign leaves its points to be run again, not lost, as
soon as their processes are gone; a silent run of another host is lost after the lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from nepi_prefect.flows.launchers import PoolLauncher
from nepi_prefect.results.campaign import campaign_frame
from nepi_prefect.results.store import RUNNING, TODO, CampaignStore, owner_id
from nepi_prefect.spec.models import ExperimentDescription
from tests.helpers import wait_until
from tests.fixtures.prefect_workers import (ROOT, create_pool, kill_marked, marked, start_worker,
                                            stop_worker)

# Longer than the test may take: the killed worker's points must be found lost because
# their processes are gone, not because they went silent (the lease has a test of its own
# below), and no live point's lease expires while the shared test server's SQLite is
# locked under load (up to its 60 s busy timeout; with 15 s, live points were launched
# again and their first attempts held every worker slot)
LEASE = "3600"
#: how long the sweep may take once the worker is killed: generous on a loaded machine,
#: and far below the lease, so a sweep that waited for the lease fails
SWEEP_END = 900

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
    host = owner_id().rpartition(":")[0]
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
        """(point, rep) of the campaign's running runs whose flow has begun in a process of
        ``label`` (the run's owner, named by the flow as it begins)."""
        owners = {f"{host}:{pid}" for pid in marked(markers[label])}
        return {(r["point"], r["rep"]) for r in _rows(tmp_path, name)
                if r["state"] == RUNNING and r["owner"] in owners}

    # a daemon: if the test fails with the sweep still going, pytest must still exit
    thread = threading.Thread(target=sweep, name="pooled-sweep", daemon=True)
    try:
        thread.start()
        # Each worker runs 2 of the 4 points dispatched (each at most 2 at once), then A dies
        # in the middle of its: both its flows have begun, so neither is still starting.
        wait_until(lambda: len(running_on("A")) == 2 and len(running_on("B")) == 2, 600,
                   "2 points running on A and 2 on B")
        lost = running_on("A")
        os.killpg(workers["A"].pid, signal.SIGKILL)
        kill_marked(markers["A"])
        workers["A"].wait(timeout=30)
        release.touch()
        thread.join(timeout=SWEEP_END)
        assert not thread.is_alive(), f"the sweep did not end within {SWEEP_END} s"
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


# A process that takes a campaign's run as a flow of a worker would (RunRecord names it the
# run's owner and beats), says so, and holds the run until killed.
HOLD = """
import sys
from nepi_prefect.flows.campaign_run import RunRecord
with RunRecord(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("begun", flush=True)
    sys.stdin.read()
"""


def _dispatched(tmp_path: Path) -> tuple[CampaignStore, dict]:
    """A one-run campaign whose run went to a flow run that is Running on the server (no
    worker runs it: the tests play the flow's process)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from nepi_prefect.flows.experiment import experiment_flow

    store = CampaignStore.open(f"lost-{uuid.uuid4().hex[:8]}", str(tmp_path))
    store.add_points([("p1", 0, {"app.command": "true"}, [0])])
    key = store.claim(1)[0]["key"]
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(experiment_flow, state=Running(),
                                          tags=[f"campaign:{store.name}"])
    store.dispatched(key, str(flow_run.id))
    return store, store.run(key)


def _launcher(store: CampaignStore, run: dict, lease: float) -> PoolLauncher:
    """A pool launcher following ``run`` (as one that dispatched it), checking at every call."""
    launcher = PoolLauncher(store, "nepi-experiment/unused", {}, lease=lease, poll=0)
    launcher.adopt([run])
    return launcher


def _flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.name


def test_a_pooled_run_whose_process_is_gone_is_dispatched_again_at_once(prefect_server, tmp_path):
    store, run = _dispatched(tmp_path)
    try:
        assert run["owner"] is None   # dispatched, not begun: no process of ours holds it
        launcher = _launcher(store, run, lease=3600)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, store.name, run["key"], str(tmp_path)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "begun"
            assert store.run(run["key"])["owner"] == f"{owner_id().rpartition(':')[0]}:{holder.pid}"
            assert launcher.ended() == []   # alive: followed, not lost
        finally:
            holder.kill()
            holder.wait(timeout=30)
        # Gone: lost within a few checks, not after the hour's lease.
        assert wait_until(launcher.ended, 120, "the run of a gone process ended",
                          interval=0.5) == [run["key"]]
        row = store.run(run["key"])
        assert row["state"] == TODO and f":{holder.pid} is gone" in row["error"], row
        assert _flow_run_state(run["flow_run_id"]) == "Crashed"
    finally:
        store.close()


def test_a_silent_pooled_run_of_another_host_is_dispatched_again_after_the_lease(prefect_server,
                                                                                 tmp_path):
    store, run = _dispatched(tmp_path)
    try:
        store.beat([run["key"]], owner="another-host:1")   # no process here to look at
        launcher = _launcher(store, run, lease=1)
        assert launcher.ended() == []   # first seen now: its lease starts
        assert wait_until(launcher.ended, 120, "the silent run ended", interval=0.5) == [run["key"]]
        row = store.run(run["key"])
        assert row["state"] == TODO and "no heartbeat for 1s" in row["error"], row
        assert _flow_run_state(run["flow_run_id"]) == "Crashed"
    finally:
        store.close()

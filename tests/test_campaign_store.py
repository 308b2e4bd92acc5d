"""The campaign store (SQLite shared by processes), the stop rule and the campaign table,
without Prefect."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from nepi_prefect.results.campaign import campaign_frame, list_campaigns, point_stats, write_tables
from nepi_prefect.results.stoprule import StopRule
from nepi_prefect.results.store import CampaignStore, owner_dead, owner_id, point_key, run_key
from tests.helpers import wait_until


def _store(tmp_path, name="c1", points=(({"a.x": 1},), ({"a.x": 2},)), reps=(0, 1)) -> CampaignStore:
    store = CampaignStore.open(name, str(tmp_path))
    store.bind(desc_hash="h1", experiment="exp")
    store.add_points([(point_key("h1", p), i, p, reps) for i, (p,) in enumerate(points)])
    return store


def test_keys_are_stable_and_distinct():
    assert point_key("h", {"a.x": 1, "b.y": 2}) == point_key("h", {"b.y": 2, "a.x": 1})
    assert point_key("h", {"a.x": 1}) != point_key("h", {"a.x": 2}) != point_key("g", {"a.x": 2})
    assert run_key("p1", 0) != run_key("p1", 1)


def test_claim_finish_and_counts(tmp_path):
    store = _store(tmp_path)
    assert store.counts() == {"todo": 4, "running": 0, "done": 0, "failed": 0}
    first = store.claim(3)
    assert [r["rep"] for r in first] == [0, 1, 0] and all(r["attempt"] == 1 for r in first)
    assert store.finish(first[0]["key"], "done", metrics={"m.v": 1.5}, run_dir="/x")
    assert not store.finish(first[0]["key"], "failed")  # already ended: left as it is
    store.finish(first[1]["key"], "failed", error="boom")
    assert store.counts() == {"todo": 1, "running": 1, "done": 1, "failed": 1}
    # registering the same points again keeps what is known
    store.add_points([(first[0]["point"], 0, {"a.x": 1}, [0, 1])])
    assert store.counts()["done"] == 1
    assert store.redo("failed") == 1 and store.counts()["failed"] == 0
    with pytest.raises(ValueError, match="expected one of failed, all"):
        store.redo("some")


def test_another_description_under_the_same_name_is_refused(tmp_path):
    _store(tmp_path).close()
    store = CampaignStore.open("c1", str(tmp_path))
    with pytest.raises(ValueError, match="another description"):
        store.bind(desc_hash="h2")
    with pytest.raises(ValueError, match="campaign name '../x'"):
        CampaignStore.open("../x", str(tmp_path))


def _claim_in_child(path: str, queue) -> None:
    store = CampaignStore.open("race", path)
    got = []
    while True:
        runs = store.claim(1)
        if not runs:
            break
        got.append(runs[0]["key"])
    queue.put(got)


def test_processes_never_claim_the_same_run(tmp_path):
    store = _store(tmp_path, "race", points=[({"a.x": i},) for i in range(40)], reps=(0,))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_child, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    keys = [k for got in claimed for k in got]
    assert len(keys) == 40 and len(set(keys)) == 40
    assert store.counts()["running"] == 40


def test_runs_of_a_dead_process_are_reclaimed_at_once(tmp_path):
    store = _store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = owner_id().rpartition(":")[0]
    mine = store.claim(1)
    theirs = store.claim(2, owner=f"{host}:{dead}")
    assert sorted(store.reclaim(lease=3600)) == sorted(r["key"] for r in theirs)
    assert store.run(mine[0]["key"])["state"] == "running"  # this process is alive
    # a silent owner on another host loses its runs after the lease
    other = store.claim(1, owner="elsewhere:1")
    store._conn().execute("UPDATE runs SET heartbeat = 0, started = 0 WHERE key = ?",
                          (other[0]["key"],))
    assert store.reclaim(lease=30) == [other[0]["key"]]


def test_an_ended_process_not_reaped_yet_is_a_dead_owner():
    # a worker's flow-run process killed with its worker waits for an init to reap it
    host = owner_id().rpartition(":")[0]
    child = subprocess.Popen(["true"])
    try:
        stat = f"/proc/{child.pid}/stat"
        wait_until(lambda: open(stat).read().rpartition(")")[2].split()[0] == "Z", 30,
                   "the child ended, not reaped")
        assert owner_dead(f"{host}:{child.pid}")
    finally:
        child.wait(timeout=30)
    assert owner_dead(f"{host}:{child.pid}") and not owner_dead(owner_id())


def test_stop_rule_decisions():
    rule = StopRule(metric="ping.rtt", ci_pct=5, min_runs=3, max_runs=5)
    assert rule.decide([10.0, 10.0], runs=2)["decision"] == "more"          # below min_runs
    steady = rule.decide([10.0, 10.1, 9.9], runs=3)
    assert steady["decision"] == "converged" and steady["n"] == 3 and steady["ci_pct"] < 5
    assert rule.decide([1.0, 10.0, 20.0], runs=3)["decision"] == "more"
    assert rule.decide([1.0, 10.0, 20.0, 3.0, 30.0], runs=5)["decision"] == "max_runs"
    by_cv = StopRule(metric="a.b", cv_pct=1, min_runs=2, max_runs=4)
    assert by_cv.decide([5.0, 5.0], runs=2)["decision"] == "converged"
    with pytest.raises(ValueError, match="max_runs 2 < min_runs 3"):
        StopRule(metric="a.b", ci_pct=5, min_runs=3, max_runs=2)
    with pytest.raises(ValueError, match="needs ci_pct or cv_pct"):
        StopRule(metric="a.b", min_runs=2, max_runs=4)


def test_campaign_frame_columns_types_and_aggregate(tmp_path):
    store = _store(tmp_path)
    for run, value in zip(store.claim(4), [1.0, 3.0, 10.0, None]):
        if value is None:
            store.finish(run["key"], "failed", error="boom")
        else:
            store.finish(run["key"], "done", metrics={"ping.rtt": value, "ping.host": "x"},
                         exp_id="exp", run_id=f"r{run['rep']}", run_dir=f"/d/{run['key']}")
    store.close()
    frame = campaign_frame("c1", str(tmp_path))
    assert list(frame.columns[:8]) == ["campaign", "point", "rep", "state", "exp_id", "run_id",
                                        "run_dir", "flow_run_id"]
    assert "a.x" in frame and "ping.rtt" in frame and "ping.host" not in frame  # numbers only
    assert frame["ping.rtt"].dtype == "float64" and frame["a.x"].tolist() == [1, 1, 2, 2]
    stats = point_stats(frame)
    assert stats["ping.rtt.mean"].tolist() == [2.0, 10.0]
    assert stats["ping.rtt.n"].tolist() == [2, 1] and stats["failed"].tolist() == [0, 1]
    assert math.isclose(stats["ping.rtt.ci95"][0], 2 * 1.0 / math.sqrt(2))
    paths = write_tables("c1", str(tmp_path))
    assert all(os.path.getsize(p) > 0 for p in paths.values())
    import pandas as pd
    assert len(pd.read_parquet(paths["parquet"])) == 4
    (listed,) = list_campaigns(str(tmp_path))
    assert (listed["name"], listed["done"], listed["failed"], listed["todo"]) == ("c1", 3, 1, 0)
    with pytest.raises(FileNotFoundError, match="no campaign 'nope'"):
        campaign_frame("nope", str(tmp_path))


def test_transient_api_errors_are_retried_with_back_off():
    import httpx

    from nepi_prefect.flows.launchers import transient, with_retries

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise httpx.ConnectError("refused")
        return "ok"

    assert with_retries(flaky, attempts=4, backoff=0.05) == "ok" and len(calls) == 3
    # the wait doubles: 0.05 s, then 0.1 s (each at least; a loaded machine adds to either)
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1
    request = httpx.Request("POST", "http://x/api/flow_runs/")
    unavailable = httpx.HTTPStatusError("503", request=request,
                                        response=httpx.Response(503, request=request))
    assert transient(unavailable) and not transient(ValueError("bad description"))
    calls.clear()
    with pytest.raises(ValueError):
        with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("no")), backoff=0.01)
    assert len(calls) == 1  # not transient: not retried

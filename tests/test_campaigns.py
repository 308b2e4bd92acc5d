"""Campaigns against a real Prefect server: resume, redo, parallel runs, stop rules, and
stopping or killing ``nepi-prefect sweep`` then running it again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from nepi_prefect.results.campaign import campaign_frame
from nepi_prefect.results.store import CampaignStore
from nepi_prefect.spec.models import ExperimentDescription
from tests.helpers import wait_until

CLI = str(Path(sys.executable).with_name("nepi-prefect"))
ROOT = Path(__file__).resolve().parent.parent
APP = {"name": "camp", "resources": [
    {"name": "node", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}},
    {"name": "app", "rtype": "LinuxApplication", "attributes": {"command": "true"}}],
    "connections": [["node", "app"]]}

# Each campaign runs several experiments that wait for their record: generous on a loaded host.
pytestmark = [pytest.mark.prefect, pytest.mark.timeout(900)]


def _desc(name: str = "camp") -> ExperimentDescription:
    return ExperimentDescription.model_validate({**APP, "name": name})


async def _children(parent) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))


async def _flow_runs_named(prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_=prefix)))


def test_sweep_resumes_and_redoes_only_failed(prefect_server, tmp_path):
    from nepi_prefect.flows.sweep import sweep_flow

    grid = {"app.command": ["true", "exit 3", "echo two"]}
    kw = dict(description=_desc(), grid=grid, results_dir=str(tmp_path), campaign="resume",
              max_concurrency=3, return_state=True)
    first = sweep_flow(**kw)
    assert first.is_completed(), first.message
    assert first.result()["counts"] == {"todo": 0, "running": 0, "done": 2, "failed": 1}
    assert len(asyncio.run(_children(first.state_details.flow_run_id))) == 3
    again = sweep_flow(**kw)
    assert again.is_completed() and asyncio.run(_children(again.state_details.flow_run_id)) == []
    redo = sweep_flow(**kw, redo="failed")
    (child,) = asyncio.run(_children(redo.state_details.flow_run_id))
    assert child.state.is_failed()
    frame = campaign_frame("resume", str(tmp_path))
    assert frame["state"].tolist() == ["done", "failed", "done"]
    assert frame["attempt"].tolist() == [1, 2, 1]
    failed = frame[frame["state"] == "failed"].iloc[0]
    assert failed["app.command"] == "exit 3" and "FAILED" in failed["error"]
    assert (tmp_path / "campaigns/resume/runs.csv").exists()
    assert (tmp_path / "campaigns/resume/runs.parquet").exists()


def test_runs_go_in_parallel(prefect_server, tmp_path):
    """With concurrency 4, the four experiments overlap: all start before any ends.
    Each app waits (120 s at most) until all four have started, so the overlap does
    not depend on how fast the runs open: run one at a time, the first would end
    before the second started."""
    from nepi_prefect.flows.sweep import sweep_flow

    met = tmp_path / "met"
    met.mkdir()
    wait_for_all = (f"n=0; while [ $(ls {met} | wc -l) -lt 4 ] && [ $n -lt 1200 ]; "
                    "do sleep 0.1; n=$((n+1)); done")
    grid = {"app.command": [f"touch {met}/{i}; {wait_for_all}; echo {i}" for i in range(4)]}
    state = sweep_flow(description=_desc("par"), grid=grid, results_dir=str(tmp_path),
                       campaign="par", max_concurrency=4, return_state=True)
    assert state.is_completed() and state.result()["counts"]["done"] == 4
    children = asyncio.run(_children(state.state_details.flow_run_id))
    assert len(children) == 4  # each run recorded as a child flow run of the sweep
    times = [json.loads((Path(d) / "summary.json").read_text())["resources"][1]["times"]
             for d in campaign_frame("par", str(tmp_path))["run_dir"]]
    assert max(t["start_time"] for t in times) < min(t["finish_time"] for t in times)


def test_stop_rule_replicates_each_point_until_it_holds(prefect_server, tmp_path):
    from nepi_prefect.flows.sweep import sweep_flow
    from nepi_prefect.results.stoprule import StopRule
    from nepi_prefect.spec.io import read_description

    desc = read_description(ROOT / "examples/ping.yaml")
    desc.resource("ping").attributes.update(count=2, interval=0.2)
    steady = StopRule(metric="ping.packets_received", ci_pct=5, min_runs=2, max_runs=4)
    state = sweep_flow(description=desc, grid={"ping.packetSize": [56, 100]}, stop_rule=steady,
                       results_dir=str(tmp_path), campaign="steady", max_concurrency=4,
                       return_state=True)
    result = state.result()
    assert [d["decision"] for d in result["decisions"].values()] == ["converged", "converged"]
    assert all(d["n"] == 2 and d["mean"] == 2.0 for d in result["decisions"].values())
    assert {p["ping.packets_received.n"] for p in result["points"]} == {2}
    # the sweep draws its own plot: the swept size against a varying ping metric
    plot = Path(result["plot"])
    assert plot.parent == tmp_path / "campaigns" / "steady" and plot.name.endswith("-vs-ping.packetSize.png")
    assert matplotlib.image.imread(plot).shape[:2] == (400, 640)
    # and `nepi-prefect plot CAMPAIGN` reads the campaign's table
    from nepi_prefect.cli import main
    out = tmp_path / "by-hand.svg"
    assert main(["plot", "steady", "--x", "ping.packetSize", "--y", "ping.rtt_avg_ms",
                 "--results", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith(("<?xml", "<svg")) and "ping.packetSize" in out.read_text()
    # a rule that cannot hold: an interval relative to a mean of zero (no loss on
    # loopback). A tiny cv_pct on the RTT held when two runs measured the same RTT.
    never = StopRule(metric="ping.packet_loss_pct", ci_pct=5, min_runs=2, max_runs=3)
    state = sweep_flow(description=desc, grid={"ping.packetSize": [56]}, stop_rule=never,
                       results_dir=str(tmp_path), campaign="never", return_state=True)
    (decision,) = state.result()["decisions"].values()
    assert decision["decision"] == "max_runs" and decision["runs"] == 3
    assert len(campaign_frame("never", str(tmp_path))) == 3


def _sweep_cmd(tmp_path: Path, campaign: str, n: int = 6, conc: int = 2) -> list[str]:
    desc = tmp_path / "slow.yaml"
    desc.write_text("name: slow\nresources:\n"
                    "  - {name: node, rtype: LinuxNode, attributes: {hostname: localhost}}\n"
                    "  - {name: app, rtype: LinuxApplication, attributes: {command: 'sleep 2'}}\n"
                    "connections: [[node, app]]\n")
    values = ",".join(f"sleep 2; echo {i}" for i in range(n))
    return [CLI, "sweep", str(desc), "--param", f"app.command={values}", "--campaign", campaign,
            "--max-concurrency", str(conc), "--results", str(tmp_path)]


def _counts(tmp_path: Path, name: str) -> dict[str, int]:
    try:
        store = CampaignStore.open(name, str(tmp_path), create=False)
    except FileNotFoundError:
        return {}
    try:
        return store.counts()
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_sweep_cancelled_and_a_rerun_finishes_it(prefect_server, tmp_path, sig):
    name = f"stop-{sig.name.lower()}"
    cmd = _sweep_cmd(tmp_path, name)
    proc = subprocess.Popen(cmd, env=prefect_server.env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _counts(tmp_path, name).get("running", 0) >= 2, 120, "two running points", 0.2)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "stopped" in err and "run the same command again" in err
    assert time.monotonic() - sent < 60
    counts = _counts(tmp_path, name)
    assert counts["running"] == 0 and counts["done"] >= 2 and counts["todo"] >= 1, counts
    assert (tmp_path / "campaigns" / name / "runs.csv").exists()
    parents = [r for r in asyncio.run(_flow_runs_named("")) if r.parameters.get("campaign") == name]
    assert parents and all(r.state.is_cancelled() for r in parents)
    done_before = set(campaign_frame(name, str(tmp_path)).query("state == 'done'")["run_id"])
    rerun = subprocess.run(cmd, env=prefect_server.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    frame = campaign_frame(name, str(tmp_path))
    assert (frame["state"] == "done").all() and len(frame) == 6
    assert done_before <= set(frame["run_id"])  # a finished point was not redone
    assert (frame["attempt"] == 1).all()


def test_a_killed_sweep_resumes_without_redoing_finished_points(prefect_server, tmp_path):
    cmd = _sweep_cmd(tmp_path, "killed", n=6, conc=2)
    proc = subprocess.Popen(cmd, env=prefect_server.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _counts(tmp_path, "killed").get("done", 0) >= 2
                  and _counts(tmp_path, "killed").get("running", 0) >= 1, 120, "2 done, 1 running", 0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = campaign_frame("killed", str(tmp_path))
    done_before = set(before.query("state == 'done'")["run_id"])
    assert (before["state"] == "running").any()
    rerun = subprocess.run(cmd, env=prefect_server.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    frame = campaign_frame("killed", str(tmp_path))
    assert (frame["state"] == "done").all() and len(frame) == 6
    assert done_before <= set(frame["run_id"])
    # the runs in progress when it was killed were reclaimed and run again
    assert (frame["attempt"] == 2).sum() >= 1 and (frame["attempt"] <= 2).all()

"""A sweep of ns-3 simulations against a real Prefect server: FlowMonitor's metrics
land in the campaign table and in each run's Prefect artifact, like measurements on
real hosts."""

from __future__ import annotations

import asyncio
import json

import pytest

from nepi_prefect.results.campaign import campaign_frame
from nepi_prefect.spec.io import read_description
from tests.fixtures.ns3 import ns3_ready  # noqa: F401  (session fixture: skips without ns3)
from tests.helpers import wait_until
from tests.test_ns3_sim import EXAMPLES, warm

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("ns3_ready"),
              pytest.mark.timeout(1500)]


async def _summary_artifacts(flow_runs: list[str]) -> list[list[dict]]:
    """The summary table artifact of each of ``flow_runs`` (the campaign's runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=flow_runs)))
    return [json.loads(a.data) for a in artifacts if a.key == "nepi-summary-ns3-dumbbell"]


def test_sweep_over_the_bottleneck_rate_fills_the_campaign_table(prefect_server, tmp_path):
    from nepi_prefect.flows.sweep import sweep_flow

    warm()
    state = sweep_flow(description=read_description(EXAMPLES / "ns3_dumbbell.yaml"),
                       grid={"bna.DataRate": ["2Mbps", "20Mbps"]}, results_dir=str(tmp_path),
                       campaign="ns3-rate", max_concurrency=1, return_state=True)
    assert state.is_completed(), state.message
    frame = campaign_frame("ns3-rate", str(tmp_path)).set_index("bna.DataRate")
    assert frame["state"].tolist() == ["done", "done"]
    for column in ("sim.flow1_throughput_mbps", "sim.flow1_delay_ms", "sim.flow1_jitter_ms",
                   "sim.flow1_loss_pct", "sim.loss_pct", "sink1.goodput_mbps"):
        assert column in frame.columns, sorted(frame.columns)
    # 2 x 8 Mbit/s offered: a 2 Mbit/s bottleneck drops most, a 20 Mbit/s one nothing.
    assert frame.loc["2Mbps", "sim.loss_pct"] > 50
    assert frame.loc["20Mbps", "sim.loss_pct"] == 0
    assert frame.loc["20Mbps", "sim.flow1_throughput_mbps"] == pytest.approx(8 * 1028 / 1000, rel=0.02)
    assert frame.loc["2Mbps", "sim.flow1_delay_ms"] > frame.loc["20Mbps", "sim.flow1_delay_ms"]

    flow_runs = frame["flow_run_id"].tolist()
    assert all(flow_runs), "each run is a Prefect flow run"
    tables = wait_until(lambda: (t := asyncio.run(_summary_artifacts(flow_runs))) and len(t) == 2
                        and t, 120, lambda: "a summary artifact for each run (found "
                        f"{len(asyncio.run(_summary_artifacts(flow_runs)))} for 2 runs)")
    sims = [next(row for row in rows if row["name"] == "sim") for rows in tables]
    assert sorted(round(s["loss_pct"]) for s in sims) == sorted(
        round(v) for v in frame["sim.loss_pct"])
    assert all(isinstance(s["flow1_throughput_mbps"], float) for s in sims)

"""The Prefect flows (experiment, sweep, converge) against a real Prefect server,
and the ExperimentRunner on its own."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.runner import ExperimentFailedError, ExperimentRunner
from nepi_prefect.spec.io import read_description

APP = """
name: {name}
resources:
  - {{name: node, rtype: LinuxNode, attributes: {{hostname: localhost}}}}
  - {{name: app, rtype: LinuxApplication, attributes: {{command: "{command}"}}}}
connections: [[node, app]]
"""


def _app(tmp_path: Path, name: str, command: str = "true") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(APP.format(name=name, command=command))
    return path


async def _flow_runs(**filters):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(**filters))


async def _artifact_rows(key: str) -> list:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
    latest = max(arts, key=lambda a: a.created)
    data = latest.data
    return json.loads(data) if isinstance(data, str) else data


def _sweep_case(tmp_path: Path):
    """The ping example over interval x packet size, and the metric every run must give."""
    desc = read_description("examples/ping.yaml").model_copy(update={"name": "sweep-test"}, deep=True)
    desc.resource("ping").attributes["count"] = 2
    return desc, {"ping.interval": [0.2, 0.3], "ping.packetSize": [56, 200]}, "ping.rtt_avg_ms"


@pytest.mark.prefect
@pytest.mark.timeout(900)  # a campaign of 4 runs, each waiting for its record, on a loaded host
def test_sweep_runs_each_point_as_a_child_flow_run(prefect_server, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId

    from nepi_prefect.flows import sweep_flow

    desc, grid, metric = _sweep_case(tmp_path)
    state = sweep_flow(description=desc, grid=grid, repeat=1, max_concurrency=4,
                       results_dir=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    parent = state.state_details.flow_run_id
    children = asyncio.run(_flow_runs(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
    assert len(children) == 4 and all(c.state.is_completed() for c in children)
    rows = result["rows"]
    assert len(rows) == 4 and all(r["state"] == "done" for r in rows)
    a, b = grid
    assert sorted((r[a], r[b]) for r in rows) == sorted((x, y) for x in grid[a] for y in grid[b])
    assert all(isinstance(r[metric], float) for r in rows)
    with open(result["csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == 4
    # the table artifact: one row per point, mean, CI and n of each metric
    points = asyncio.run(_artifact_rows("nepi-sweep-sweep-test"))
    assert len(points) == 4 and all(p[f"{metric}.n"] == 1 for p in points)
    assert all(isinstance(p[f"{metric}.mean"], float) for p in points)
    assert asyncio.run(_artifact_rows("nepi-sweep-sweep-test-progress")) == 100.0


@pytest.mark.prefect
def test_experiment_flow_fails_when_the_experiment_fails(prefect_server, tmp_path):
    from nepi_prefect.flows import experiment_flow

    ok = experiment_flow(description_file=str(_app(tmp_path, "flow-ok")),
                         results_dir=str(tmp_path), return_state=True)
    assert ok.is_completed() and ok.result()["state"] == "COMPLETED"
    bad = experiment_flow(description_file=str(_app(tmp_path, "flow-bad")),
                          overrides={"app.command": "exit 4"},
                          results_dir=str(tmp_path), return_state=True)
    assert bad.is_failed()
    assert "experiment flow-bad FAILED" in bad.message
    (run,) = asyncio.run(_flow_runs(id={"any_": [bad.state_details.flow_run_id]}))
    assert run.state.is_failed()


def test_experiment_runner_repeats_until_converged(tmp_path):
    path = _app(tmp_path, "runner", "echo 5")
    ec = ExperimentController.load(str(path), recorder=Recorder(), local_dir=str(tmp_path))
    seen = []

    def metric(run_ec: ExperimentController, run: int) -> float:
        seen.append(run_ec.run_id)
        assert run_ec.exp_id == "runner" and run_ec.state(2, hr=True) in ("FINISHED", "RELEASED")
        return [10.0, 10.0, 10.0, 10.0, 10.1][run - 1] if run < 5 else 10.0

    runner = ExperimentRunner(recorder_factory=Recorder)
    runs = runner.run(ec, min_runs=3, max_runs=6, wait_guids=[2], compute_metric_callback=metric)
    assert runs == 3 and len(set(seen)) == 3  # three independent runs, each its own run id
    assert len(list((tmp_path / "runner").glob("*/summary.json"))) == 3
    runs = ExperimentRunner(recorder_factory=Recorder).run(
        str(path), min_runs=1, max_runs=4, compute_metric_callback=lambda e, r: float(r),
        evaluate_convergence_callback=lambda e, r, samples: False)
    assert runs == 4
    ec.shutdown()


def test_experiment_runner_stops_on_a_failed_run(tmp_path):
    path = _app(tmp_path, "runner-bad", "exit 1")
    with pytest.raises(ExperimentFailedError, match="runner-bad"):
        ExperimentRunner(recorder_factory=Recorder, local_dir=str(tmp_path)).run(
            str(path), max_runs=3)


@pytest.mark.prefect
def test_converge_flow(prefect_server, tmp_path):
    pytest.importorskip("nepi_prefect.resources.linux.ping")
    from nepi_prefect.flows import converge_flow

    result = converge_flow(description_file="examples/ping.yaml", overrides={"ping.count": 2},
                           metric="ping.packet_loss_pct", min_runs=2, max_runs=3,
                           relative_ci=1.0, results_dir=str(tmp_path))
    assert 2 <= result["runs"] <= 3 and len(result["samples"]) == result["runs"]


def test_experiment_flow_parameters_render_as_a_form():
    """Prefect builds the run form from this schema: the description is a typed model."""
    from prefect.utilities.callables import parameter_schema

    from nepi_prefect.flows import experiment_flow, sweep_flow

    for flow_ in (experiment_flow, sweep_flow):
        schema = parameter_schema(flow_.fn).model_dump()
        ref = schema["properties"]["description"]["anyOf"][0]["$ref"]
        assert ref == "#/definitions/ExperimentDescription"
        model = schema["definitions"]["ExperimentDescription"]
        assert {"resources", "connections", "conditions"} <= set(model["properties"])
        assert "ResourceSpec" in schema["definitions"]

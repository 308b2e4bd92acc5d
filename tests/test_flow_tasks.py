"""run_experiment_task: an experiment inside a user's own flow, against a real
Prefect server, read back through Prefect's client."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.flows import ExperimentFailed
from nepi_prefect.flows.tasks import run_experiment_task

APP = {"name": "task-app", "resources": [
    {"name": "node", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}},
    {"name": "app", "rtype": "LinuxApplication", "attributes": {"command": "echo hi"}}],
    "connections": [["node", "app"]]}


async def _children(parent_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


@pytest.mark.prefect
def test_run_experiment_task_inside_a_user_flow(prefect_server, tmp_path):
    path = tmp_path / "app.yaml"
    import yaml
    path.write_text(yaml.safe_dump(APP))

    @flow(name="user-study")
    def study():
        ok = run_experiment_task(str(path), overrides={"app.command": "echo 42"},
                                 results_dir=str(tmp_path))
        bad = run_experiment_task(APP, overrides={"app.command": "exit 3"},
                                  results_dir=str(tmp_path), raise_on_failure=False)
        return ok, bad

    state = study(return_state=True)
    assert state.is_completed(), state.message
    ok, bad = state.result()
    assert ok["state"] == "COMPLETED" and bad["state"] == "FAILED"
    assert {r["name"] for r in ok["resources"]} == {"node", "app"}
    assert (tmp_path / "task-app" / ok["run_id"] / "summary.json").exists()
    # Each experiment is a child flow run of the user's flow, read back from the server.
    children = asyncio.run(_children(state.state_details.flow_run_id))
    names = {c.name for c in children}
    assert {f"task-app-{ok['run_id']}", f"task-app-{bad['run_id']}"} <= names


@pytest.mark.prefect
def test_run_experiment_task_fails_the_task_and_runs_a_built_ec(prefect_server, tmp_path):
    def build() -> ExperimentController:
        ec = ExperimentController(exp_id="task-built", local_dir=str(tmp_path), recorder=Recorder())
        node = ec.register_resource("LinuxNode")
        ec.set(node, "hostname", "localhost")
        app = ec.register_resource("LinuxApplication")
        ec.set(app, "command", "exit 5")
        ec.register_connection(node, app)
        return ec

    @flow(name="user-study-failing")
    def study():
        return run_experiment_task(build)

    state = study(return_state=True)
    assert state.is_failed()
    with pytest.raises(ExperimentFailed, match="task-built FAILED"):
        state.result()


def test_run_experiment_task_rejects_what_it_cannot_run():
    ec = ExperimentController(exp_id="task-reject", recorder=Recorder())
    try:
        with pytest.raises(ValueError, match="overrides apply to a description"):
            run_experiment_task.fn(ec, overrides={"a.b": 1})
    finally:
        ec.shutdown()
    with pytest.raises(TypeError, match="not int"):
        run_experiment_task.fn(42)

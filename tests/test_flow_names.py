"""Flow runs are named after the experiment and its parameters, not at random."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import wait_until

from nepi_prefect.flows._common import description_name, run_name


def test_run_name_shows_the_experiment_and_its_parameters():
    assert run_name("ping", {"ping.interval": 0.2}, rep=1) == "ping-interval=0.2-r1"
    assert run_name("ping") == "ping"
    assert run_name(None, {"a.size": 1, "b.size": 2, "a.n": 3}) == \
        "experiment-a.size=1-b.size=2-n=3"  # shared attribute names stay qualified


def test_description_name_reads_the_file_or_the_inline_description(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: from-file\nresources:\n  - {name: n, rtype: LinuxNode, attributes: {hostname: localhost}}\n")
    assert description_name({"description_file": str(path)}) == "from-file"
    assert description_name({"description": {"name": "inline"}}) == "inline"
    assert description_name({"description_file": str(tmp_path / "missing.yaml")}) is None


def local_app(path, name: str):
    """A description ``name``: an app ``app`` on a node ``node`` (localhost)."""
    path.write_text(f"name: {name}\nresources:\n"
                    "  - {name: node, rtype: LinuxNode, attributes: {hostname: localhost}}\n"
                    "  - {name: app, rtype: LinuxApplication, attributes: {command: 'true'}}\n"
                    "connections: [[node, app]]\n")
    return path


@pytest.mark.prefect
def test_experiment_flow_run_is_named_after_the_experiment(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    from nepi_prefect.flows import experiment_flow

    path = local_app(tmp_path / "named.yaml", "named-run")
    state = experiment_flow(description_file=str(path), overrides={"app.command": "echo 1"},
                            results_dir=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message

    flow_run_id = state.state_details.flow_run_id

    async def read():
        from prefect.client.schemas.filters import FlowRunFilter

        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(
                id={"any_": [flow_run_id]}))
        return run, {t.name for t in tasks}

    def task_names():  # task-run states reach the server as events, and can lag
        run, names = asyncio.run(read())
        return names if {"deploy-node", "start-app", "release-app"} <= names else None

    assert asyncio.run(read())[0].name == "named-run-command=echo 1"
    wait_until(task_names, timeout=60, interval=1, message="task runs deploy-node, start-app")


@pytest.mark.prefect
def test_sweep_children_are_named_after_the_experiment_and_its_point(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from nepi_prefect.flows import sweep_flow

    path = local_app(tmp_path / "swept.yaml", "swept")
    state = sweep_flow(description_file=str(path), grid={"app.command": ["echo 1", "echo 2"]},
                       results_dir=str(tmp_path), campaign="swept-names", return_state=True)
    assert state.is_completed(), state.message
    parent = state.state_details.flow_run_id

    async def sweep_name():
        async with get_client() as client:
            return (await client.read_flow_run(parent)).name

    assert asyncio.run(sweep_name()) == "swept-names"     # the campaign's, not random

    async def children():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        return {run.name for run in runs if "campaign:swept-names" in run.tags}

    def named():
        names = asyncio.run(children())
        return names if len(names) == 2 else None

    # each point's run, by the store's repetition number (the first is r0)
    assert wait_until(named, timeout=120, interval=1, message="two child flow runs") == \
        {"swept-command=echo 1-r0", "swept-command=echo 2-r0"}

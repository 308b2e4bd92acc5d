"""The Prefect bridge against a real Prefect API: read the record back after each run."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client

from nepi_prefect.execution.attribute import Attribute, Flags
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import (
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.fixtures.prefect_api import wait_for_record
from tests.helpers import wait_until

pytestmark = pytest.mark.prefect

pytestmark = pytest.mark.prefect

SECRET = "s3cr3t-" + uuid.uuid4().hex


@clsinit_copy
class Simple(ResourceManager):
    """Deploys, starts and stops at once; logs on start."""

    _rtype = "PrefectTestSimple"

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("password", "a secret", flags=Flags.Credential))
        cls._register_attribute(Attribute("label", "a label"))

    def do_start(self):
        self.info(f"starting {self.get('label')} with {self.get('password')}")
        super().do_start()


@clsinit_copy
class Exploding(ResourceManager):
    """Raises in start."""

    _rtype = "PrefectTestExploding"

    def do_start(self):
        raise RuntimeError("start exploded on purpose")


for _cls in (Simple, Exploding):
    ResourceFactory.register_type(_cls)


def run_experiment(build, tmp_path, exp_id=None, until=(ResourceState.STARTED, ResourceState.FINISHED,
                                                         ResourceState.FAILED), **ec_kwargs):
    """Build with ``build(ec)``, deploy, wait for starts, shut down; return (ec, recorder, guids)."""
    recorder = PrefectRecorder(**ec_kwargs)
    ec = ExperimentController(exp_id=exp_id or f"exp-{uuid.uuid4().hex[:8]}",
                              local_dir=str(tmp_path), recorder=recorder)
    guids = build(ec)
    ec.deploy()
    ec.wait(guids, states=until, timeout=30)
    ec.shutdown()
    with get_client(sync_client=True) as client:
        wait_for_record(client, recorder)
    return ec, recorder, guids


def task_runs(client, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs, offset = [], 0
    while True:
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=200, offset=offset)
        runs += page
        if len(page) < 200:
            return {r.name: r for r in runs}
        offset += 200


def upstream_ids(task_run):
    return {i.id for i in task_run.task_inputs.get("wait_for", [])}


@pytest.fixture
def client(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


def test_flow_run_task_runs_logs_and_artifact(client, tmp_path):
    def build(ec):
        a = ec.register_resource("PrefectTestSimple")
        b = ec.register_resource("PrefectTestSimple")
        ec.set(a, "password", SECRET)
        ec.set(a, "label", "first")
        ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED)
        ec.register_condition([a, b], ResourceAction.STOP, [a, b], ResourceState.STARTED)
        return [a, b]

    ec, recorder, (a, b) = run_experiment(build, tmp_path, exp_id="exp-flow",
                                          until=(ResourceState.STOPPED,))
    flow_run = client.read_flow_run(recorder.flow_run_id)
    assert flow_run.name == f"exp-flow-{ec.run_id}"
    assert "exp-flow" in flow_run.tags
    assert flow_run.state.is_completed()
    assert flow_run.parent_task_run_id is None

    runs = task_runs(client, flow_run.id)
    for guid in (a, b):
        for kind in ("deploy", "start", "stop", "release"):
            name = f"{kind}-PrefectTestSimple-{guid}"
            assert name in runs, sorted(runs)
            assert runs[name].state.is_completed(), (name, runs[name].state)
    # START and STOP conditions are edges: a's start -> b's start; a's and b's starts -> b's stop
    assert {runs[f"start-PrefectTestSimple-{g}"].id for g in (a, b)} <= \
        upstream_ids(runs[f"stop-PrefectTestSimple-{b}"])
    assert runs[f"start-PrefectTestSimple-{a}"].id in upstream_ids(runs[f"start-PrefectTestSimple-{b}"])
    # each task run lasted until its RM reached the target state
    start_a = runs[f"start-PrefectTestSimple-{a}"]
    assert start_a.start_time is not None and start_a.end_time >= start_a.start_time

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    started = [entry for entry in logs if "starting first" in entry.message]
    assert started and started[0].task_run_id == start_a.id
    assert all(SECRET not in entry.message for entry in logs)

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    by_key = {art.key: art for art in artifacts}
    assert sorted(by_key) == ["nepi-report-exp-flow", "nepi-summary-exp-flow"]
    table = by_key["nepi-summary-exp-flow"]
    rows = json.loads(table.data)
    assert {(r["guid"], r["rtype"], r["state"]) for r in rows} == {
        (a, "PrefectTestSimple", "STOPPED"), (b, "PrefectTestSimple", "STOPPED")}
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in rows)
    assert ec.run_dir in table.description
    assert "**STOPPED**" not in by_key["nepi-report-exp-flow"].data
    assert "**COMPLETED**" in by_key["nepi-report-exp-flow"].data


def test_group_barrier_edges(client, tmp_path):
    def build(ec):
        return [ec.register_resource("PrefectTestSimple") for _ in range(3)]

    ec, recorder, guids = run_experiment(build, tmp_path)
    runs = task_runs(client, recorder.flow_run_id)
    barrier = runs["barrier-group-1"]
    assert barrier.state.is_completed()
    deploys = {runs[f"deploy-PrefectTestSimple-{g}"].id for g in guids}
    assert upstream_ids(barrier) == deploys
    for g in guids:
        assert barrier.id in upstream_ids(runs[f"start-PrefectTestSimple-{g}"])


def test_interactive_deploy_joins_the_flow_run(client, tmp_path):
    recorder = PrefectRecorder()
    ec = ExperimentController(local_dir=str(tmp_path), recorder=recorder)
    a = ec.register_resource("PrefectTestSimple")
    ec.deploy()
    ec.wait_started([a], timeout=30)
    b = ec.register_resource("PrefectTestSimple")
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED)
    ec.deploy()
    ec.wait_started([b], timeout=30)
    ec.shutdown()
    wait_for_record(client, recorder)
    runs = task_runs(client, recorder.flow_run_id)
    assert {"barrier-group-1", "barrier-group-2", f"start-PrefectTestSimple-{b}"} <= set(runs)
    assert runs[f"start-PrefectTestSimple-{a}"].id in upstream_ids(runs[f"start-PrefectTestSimple-{b}"])


def test_delayed_start_is_scheduled_and_starts_later(client, tmp_path):
    delay = 1.5

    def build(ec):
        a = ec.register_resource("PrefectTestSimple")
        b = ec.register_resource("PrefectTestSimple")
        ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED, f"{delay}s")
        return [a, b]

    ec, recorder, (a, b) = run_experiment(build, tmp_path)
    runs = task_runs(client, recorder.flow_run_id)
    start_a, start_b = runs[f"start-PrefectTestSimple-{a}"], runs[f"start-PrefectTestSimple-{b}"]
    assert start_b.start_time - start_a.start_time >= timedelta(seconds=delay)
    history = client.read_task_run_states(start_b.id)
    scheduled = [s for s in history if s.is_scheduled()]
    assert scheduled and scheduled[0].state_details.scheduled_time is not None
    assert scheduled[0].state_details.scheduled_time - start_a.start_time >= timedelta(seconds=delay - 0.01)
    # a start that ended before it was shipped goes out as its last state only
    assert history[-1].type.value == "COMPLETED"
    assert history.index(scheduled[0]) < len(history) - 1


def test_failing_critical_rm_fails_the_flow_run(client, tmp_path):
    def build(ec):
        good = ec.register_resource("PrefectTestSimple")
        bad = ec.register_resource("PrefectTestExploding")
        return [good, bad]

    ec, recorder, (good, bad) = run_experiment(build, tmp_path)
    flow_run = client.read_flow_run(recorder.flow_run_id)
    assert flow_run.state.is_failed()
    assert flow_run.state.message.startswith("experiment failed: PrefectTestExploding-")
    runs = task_runs(client, flow_run.id)
    failed = runs[f"start-PrefectTestExploding-{bad}"]
    assert failed.state.is_failed(), failed.state
    # the RM's own reason, on its run and on the flow run, which names it
    assert "start exploded on purpose" in failed.state.message
    assert f"PrefectTestExploding-{bad} (PrefectTestExploding {bad}) FAILED: RuntimeError: " \
        "start exploded on purpose" in flow_run.state.message
    assert runs[f"deploy-PrefectTestExploding-{bad}"].state.is_completed()


def test_secret_never_reaches_the_server(client, prefect_server, tmp_path):
    def build(ec):
        a = ec.register_resource("PrefectTestSimple")
        ec.set(a, "password", SECRET)
        ec.set(a, "label", "secretive")
        return [a]

    ec, recorder, _ = run_experiment(build, tmp_path)
    flow_run = client.read_flow_run(recorder.flow_run_id)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    everything = [flow_run.model_dump_json()]
    everything += [r.model_dump_json() for r in task_runs(client, flow_run.id).values()]
    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    assert any("secretive" in entry.message for entry in logs)
    everything += [entry.model_dump_json() for entry in logs]
    everything += [a.model_dump_json() for a in client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))]
    assert not [text for text in everything if SECRET in text]


def test_ec_inside_a_user_flow_is_a_subflow(client, tmp_path):
    from prefect import flow

    @flow(name="user-flow")
    def user_flow():
        recorder = PrefectRecorder()
        ec = ExperimentController(local_dir=str(tmp_path), recorder=recorder)
        a = ec.register_resource("PrefectTestSimple")
        ec.deploy()
        ec.wait_started([a], timeout=30)
        ec.shutdown()
        return recorder.flow_run_id

    from prefect.context import FlowRunContext
    assert FlowRunContext.get() is None
    state = user_flow(return_state=True)
    child_id = state.result()
    child = client.read_flow_run(child_id)
    assert child.state.is_completed()
    assert child.parent_task_run_id is not None
    parent_task = client.read_task_run(child.parent_task_run_id)
    assert parent_task.flow_run_id == state.state_details.flow_run_id
    # the server writes task runs after it accepted them: read until they are in
    wait_until(lambda: len(task_runs(client, child.id)) >= 4, timeout=120,
               message=lambda: str(sorted(task_runs(client, child.id))))


def test_attach_current_records_into_the_users_flow(client, tmp_path):
    from prefect import flow
    from prefect.context import FlowRunContext

    @flow(name="user-flow-current")
    def user_flow():
        recorder = PrefectRecorder(attach="current")
        ec = ExperimentController(local_dir=str(tmp_path), recorder=recorder)
        a = ec.register_resource("PrefectTestSimple")
        ec.deploy()
        ec.wait_started([a], timeout=30)
        ec.shutdown()
        assert recorder.flow_run_id == FlowRunContext.get().flow_run.id
        return a

    state = user_flow(return_state=True)
    guid = state.result()
    name = f"start-PrefectTestSimple-{guid}"
    # the server writes task runs after it accepted them: read until it is in, final
    wait_until(lambda: (run := task_runs(client, state.state_details.flow_run_id).get(name))
               and run.state.is_completed(), timeout=120,
               message=lambda: str(task_runs(client, state.state_details.flow_run_id).get(name)))
    assert client.read_flow_run(state.state_details.flow_run_id).state.is_completed()

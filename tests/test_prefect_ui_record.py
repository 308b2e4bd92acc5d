"""Issue 10 through a real Prefect API: a failed experiment reads like the experiment.

One experiment runs for the whole module (a server and a run are slow on a loaded
machine): a ``server`` app that measures and finishes, a ``client`` that starts after
it and fails by itself (exit code 3), and a ``reporter`` that would start after the
client finished, so never does. Every test reads the record back through Prefect's
client or REST API: task-run states, messages and tags, the flow run's name and
message, the artifacts, the ``nepi.*`` events and the task-run logs.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import (
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)
from nepi_prefect.flows._common import run_name
from nepi_prefect.orchestration.dbtemplate import prefect_cli
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.fixtures.prefect_api import wait_for_record
from tests.helpers import wait_until

pytestmark = pytest.mark.prefect

SECRET = "pw-" + uuid.uuid4().hex
RTYPE = "UiRecordApp"


@clsinit_copy
class UiApp(ResourceManager):
    """Runs ``duration`` seconds, then finishes (exit code 0: with metrics) or fails;
    its stdout and stderr are 'collected' as files, as a Collector would."""

    _rtype = RTYPE

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("duration", "seconds it runs", type=Types.Double,
                                          default=0.2))
        cls._register_attribute(Attribute("exitcode", "how it ends", type=Types.Integer,
                                          default=0))
        cls._register_attribute(Attribute("outdir", "where its outputs go"))
        cls._register_attribute(Attribute("password", "a secret", flags=Flags.Credential))

    def do_start(self):
        super().do_start()
        self.ec.schedule(f"{self.get('duration')}s", self._ended)

    def _ended(self):
        if self.state != ResourceState.STARTED:
            return
        out = Path(self.get("outdir")) / self.name
        out.mkdir(parents=True, exist_ok=True)
        code = self.get("exitcode")
        (out / "stdout").write_text("".join(f"line {i} of {self.name}\n" for i in range(400))
                                    + f"{self.name} done\n")
        (out / "stderr").write_text(f"{self.name}: no route to host (password {self.get('password')})\n"
                                    if code else "")
        self.collected.update(stdout=str(out / "stdout"), stderr=str(out / "stderr"))
        if code == 0:
            self._metrics.update(rtt_ms=1.25, loss_pct=0.0)
            self.set_finished()
        else:
            self.failure = f"command exited with code {code}"
            self.fail()


ResourceFactory.register_type(UiApp)


AUTOMATIONS = Path(__file__).resolve().parents[1] / "deployments" / "automations.yaml"


class Record:
    """The module's run, as the tests read it."""

    def __init__(self, ec, recorder, api_url, automation_id):
        self.ec, self.recorder, self.api_url = ec, recorder, api_url
        self.name = run_name(ec.exp_id, {"client.exitcode": 3}, 1)
        self.automation_id = automation_id


def install_automation(prefect_server) -> str:
    """The shipped example automation, installed as its comment says; its id."""
    from prefect.client.orchestration import get_client

    done = subprocess.run([*prefect_cli(), "automation", "create", "--from-file",
                           str(AUTOMATIONS)], env=prefect_server.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as prefect:
        found = prefect.read_automations_by_name("nepi-resource-failed")
    assert found, done.stdout
    return str(found[-1].id)


@pytest.fixture(scope="module")
def record(prefect_server, tmp_path_factory):
    from prefect.client.orchestration import get_client

    tmp = tmp_path_factory.mktemp("ui-record")
    automation_id = install_automation(prefect_server)
    exp_id = f"ui-rec-{uuid.uuid4().hex[:6]}"
    recorder = PrefectRecorder(name=run_name(exp_id, {"client.exitcode": 3}, 1))
    ec = ExperimentController(exp_id=exp_id, local_dir=str(tmp), recorder=recorder)
    server = ec.register_resource(RTYPE, name="server")
    client = ec.register_resource(RTYPE, name="client")
    reporter = ec.register_resource(RTYPE, name="reporter")
    for guid in (server, client, reporter):
        ec.set(guid, "outdir", str(tmp / "outputs"))
    ec.set(client, "exitcode", 3)
    ec.set(client, "password", SECRET)
    ec.register_condition(client, ResourceAction.START, server, ResourceState.FINISHED)
    ec.register_condition(reporter, ResourceAction.START, client, ResourceState.FINISHED)
    try:
        ec.deploy()
        ec.wait([server, client, reporter], timeout=60)
    finally:
        ec.shutdown()
    with get_client(sync_client=True) as prefect:
        wait_for_record(prefect, recorder)
    return Record(ec, recorder, prefect_server.api_url, automation_id)


@pytest.fixture(scope="module")
def prefect(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


def task_runs(prefect, flow_run_id, **filters):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = prefect.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, **filters)
    return {r.name: r for r in runs}


# -- item 3: failures are visible -------------------------------------------------------------
def test_the_failed_resources_run_is_failed_with_its_reason(record, prefect):
    runs = task_runs(prefect, record.recorder.flow_run_id)
    failed = [name for name, run in runs.items() if run.state.is_failed()]
    assert failed == ["stop-client"], {n: r.state.type.value for n, r in runs.items()}
    assert runs["stop-client"].state.message == "command exited with code 3"
    assert runs["start-client"].state.is_completed()   # it did start


def test_the_flow_run_names_the_failed_resource_and_why(record, prefect):
    flow_run = prefect.read_flow_run(record.recorder.flow_run_id)
    assert flow_run.state.is_failed()
    assert f"client ({RTYPE} 2) FAILED: command exited with code 3" in flow_run.state.message


def test_runs_the_failure_prevented_are_cancelled_not_completed(record, prefect):
    runs = task_runs(prefect, record.recorder.flow_run_id)
    assert runs["start-reporter"].state.is_cancelled(), runs["start-reporter"].state
    assert "experiment aborted" in runs["start-reporter"].state.message
    assert "stop-reporter" not in runs
    # what did happen completed: the server's whole life, every deploy and release
    for name in ("deploy-server", "start-server", "stop-server", "release-server",
                 "deploy-reporter", "release-reporter", "release-client"):
        assert runs[name].state.is_completed(), (name, runs[name].state)


# -- item 1: names and tags ------------------------------------------------------------------
def test_task_runs_are_tagged_with_rtype_resource_action_and_experiment(record, prefect):
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    runs = task_runs(prefect, record.recorder.flow_run_id)
    assert {"action:start", f"rtype:{RTYPE}", "resource:client", record.ec.exp_id} <= \
        set(runs["start-client"].tags)
    # the UI's tag filter: every run of the client, and nothing else
    clients = task_runs(prefect, record.recorder.flow_run_id, task_run_filter=TaskRunFilter(
        tags=TaskRunFilterTags(all_=["resource:client"])))
    assert sorted(clients) == ["deploy-client", "release-client", "start-client", "stop-client"]
    stops = task_runs(prefect, record.recorder.flow_run_id, task_run_filter=TaskRunFilter(
        tags=TaskRunFilterTags(all_=["action:stop"])))
    assert sorted(stops) == ["stop-client", "stop-server"]


def test_the_flow_run_carries_the_name_it_was_given(record, prefect):
    flow_run = prefect.read_flow_run(record.recorder.flow_run_id)
    assert flow_run.name == f"{record.ec.exp_id}-exitcode=3-r1" == record.name


# -- item 4: results at a glance -------------------------------------------------------------
def _artifacts(prefect, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = prefect.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {art.key: art for art in found}


def test_summary_table_one_row_per_resource_with_numeric_metric_columns(record, prefect):
    arts = _artifacts(prefect, record.recorder.flow_run_id)
    key = f"nepi-summary-{record.ec.exp_id}"
    assert key in arts, sorted(arts)
    rows = {row["name"]: row for row in json.loads(arts[key].data)}
    assert set(rows) == {"server", "client", "reporter"}
    assert (rows["server"]["rtype"], rows["server"]["state"]) == (RTYPE, "FINISHED")
    assert rows["server"]["rtt_ms"] == 1.25 and rows["server"]["loss_pct"] == 0.0
    assert isinstance(rows["server"]["duration_s"], float) and rows["server"]["duration_s"] >= 0.15
    assert rows["client"]["state"] == "FAILED"
    assert rows["client"]["failure"] == "command exited with code 3"
    assert rows["client"]["rtt_ms"] is None
    assert rows["reporter"]["duration_s"] is None           # it never started
    assert SECRET not in arts[key].data


def test_markdown_report_tells_verdict_timeline_metrics_failure_and_traces(record, prefect):
    arts = _artifacts(prefect, record.recorder.flow_run_id)
    report = arts[f"nepi-report-{record.ec.exp_id}"]
    assert report.type == "markdown"
    text = report.data
    assert "**FAILED**" in text
    assert "client (UiRecordApp 2) FAILED: command exited with code 3" in text
    assert "## Timeline" in text and "| server | UiRecordApp | FINISHED |" in text
    assert "| server | rtt_ms | 1.25 |" in text
    assert record.ec.run_dir in text
    assert "outputs/client/stderr" in text
    assert SECRET not in text


# -- item 6: events for automations ----------------------------------------------------------
def _events(record) -> list[dict]:
    """The run's ``nepi.*`` events, read back through ``POST /events/filter`` (the server
    stores events asynchronously: wait until the last kinds posted are there)."""
    body = {"filter": {"event": {"prefix": ["nepi."]},
                       "related": {"id": [f"nepi.run.{record.ec.exp_id}.{record.ec.run_id}"]}},
            "limit": 50}   # the most the API returns in one page

    def read():
        found = httpx.post(f"{record.api_url}/events/filter", json=body, timeout=30)
        found.raise_for_status()
        events = found.json()["events"]
        released = [e for e in events if e["event"] == "nepi.resource.released"]
        return events if len(released) == 3 and any(
            e["event"] == "nepi.metric" for e in events) else None

    return wait_until(read, timeout=120, interval=0.5, message="the run's nepi.* events")


def test_resource_state_events_name_the_resource_and_relate_the_run(record):
    events = _events(record)
    failed = [e for e in events if e["event"] == "nepi.resource.failed"]
    assert len(failed) == 1, sorted(e["event"] for e in events)
    event = failed[0]
    assert event["resource"]["prefect.resource.name"] == "client"
    assert event["resource"]["nepi.rtype"] == RTYPE
    assert event["payload"]["failure"] == "command exited with code 3"
    related = {r["prefect.resource.id"]: r["prefect.resource.role"] for r in event["related"]}
    assert related[f"nepi.experiment.{record.ec.exp_id}"] == "nepi-experiment"
    assert related[f"prefect.flow-run.{record.recorder.flow_run_id}"] == "flow-run"
    # every resource went through its states: the server was started, finished, released
    server = [e["event"] for e in events if e["resource"]["prefect.resource.name"] == "server"]
    assert {"nepi.resource.started", "nepi.resource.finished", "nepi.resource.released"} <= \
        set(server)


def test_metric_events_carry_the_values(record):
    metrics = [e for e in _events(record) if e["event"] == "nepi.metric"]
    by_name = {e["payload"]["metric"]: e for e in metrics}
    assert set(by_name) == {"rtt_ms", "loss_pct"}
    rtt = by_name["rtt_ms"]
    assert rtt["payload"]["value"] == 1.25 and rtt["resource"]["nepi.value"] == "1.25"
    roles = {r["prefect.resource.role"]: r for r in rtt["related"]}
    assert roles["nepi-resource"]["prefect.resource.name"] == "server"
    assert roles["nepi-run"]["prefect.resource.id"] == \
        f"nepi.run.{record.ec.exp_id}.{record.ec.run_id}"


def test_the_shipped_automation_fires_when_a_resource_fails(record):
    body = {"filter": {"event": {"name": ["prefect.automation.triggered"]},
                       "resource": {"id": [f"prefect.automation.{record.automation_id}"]}},
            "limit": 50}

    def fired():
        found = httpx.post(f"{record.api_url}/events/filter", json=body, timeout=30)
        found.raise_for_status()
        return [e for e in found.json()["events"]
                if (e["payload"].get("triggering_event") or {}).get("resource", {}).get(
                    "prefect.resource.id", "").startswith(
                    f"nepi.resource.{record.ec.exp_id}.{record.ec.run_id}.")]

    firings = wait_until(fired, timeout=120, interval=0.5, message="the automation's firing")
    trigger = firings[0]["payload"]["triggering_event"]
    assert trigger["event"] == "nepi.resource.failed"
    assert trigger["resource"]["prefect.resource.name"] == "client"
    assert len(firings) == 1


# -- item 5: logs tell the story -------------------------------------------------------------
def test_task_run_logs_hold_states_failure_metrics_and_output_tails(record, prefect):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    runs = task_runs(prefect, record.recorder.flow_run_id)
    logs = prefect.read_logs(log_filter=LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[record.recorder.flow_run_id])), limit=200)
    by_run: dict = {}
    for entry in logs:
        by_run.setdefault(entry.task_run_id, []).append(entry.message)
    assert "client is STARTED" in by_run[runs["start-client"].id]
    assert "client FAILED: command exited with code 3" in by_run[runs["stop-client"].id]
    released = "\n".join(by_run[runs["release-server"].id])
    assert "server measured: loss_pct=0.0, rtt_ms=1.25" in released
    assert "server done" in released                     # the tail of its stdout
    assert "line 0 of server" not in released            # bounded: only the tail
    client_out = "\n".join(by_run[runs["release-client"].id])
    assert "client: no route to host" in client_out      # the tail of its stderr
    assert all(SECRET not in entry.message for entry in logs)

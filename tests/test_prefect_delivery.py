"""Shipping a record to a real Prefect API: a passing task-run state waits a moment for its
successor (a quick action goes out as its last state only), a state that lasts is shown;
a close that is tried again (in this process or by another) shows each artifact once."""

from __future__ import annotations

import uuid
from datetime import datetime

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from nepi_prefect.execution.recording import RunState
from nepi_prefect.orchestration.delivery import Delivery, Target
from nepi_prefect.orchestration.events import Snapshot, TaskRunEvents
from nepi_prefect.orchestration.journal import Journal
from tests.helpers import wait_until

pytestmark = pytest.mark.prefect


def _unconnected(tmp_path, monkeypatch, name: str) -> Delivery:
    """A fresh record's delivery, its journal under tmp_path, not connected to any API."""
    monkeypatch.setenv("NEPI_PREFECT_JOURNAL", str(tmp_path / "journal"))
    target = Target(attach="new", flow_run_name=name, tags=["nepi-test"], parameters={},
                    started=datetime.now().astimezone().isoformat())
    return Delivery(Journal.create(uuid.uuid4().hex, target.header()), target)


@pytest.fixture
def delivery(prefect_server, tmp_path, monkeypatch):
    shipping = _unconnected(tmp_path, monkeypatch, f"settle-{uuid.uuid4().hex[:8]}")
    shipping.connect()
    yield shipping
    shipping.journal.release()


def _snap(run_id: uuid.UUID, state: RunState, started: datetime | None = None,
          ended: datetime | None = None) -> Snapshot:
    now = datetime.now()
    return Snapshot(run_id, "start-app", "start", "TestRM", state, (), now, None, started, ended,
                    "", datetime.now().astimezone(), "app")


def _history(run_id: uuid.UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        try:
            return [s.type.value for s in client.read_task_run_states(run_id)]
        except Exception:   # not on the server (yet)
            return []


def test_a_quick_action_goes_out_as_its_last_state(delivery):
    events, run_id = TaskRunEvents(["nepi-test"]), uuid.uuid4()
    delivery.add_event(events.event(_snap(run_id, RunState.PENDING)))
    delivery.ship(settle=60)
    assert delivery.pending == 1          # young and passing: held back, not posted
    started = datetime.now()
    delivery.add_event(events.event(_snap(run_id, RunState.RUNNING, started)))
    delivery.add_event(events.event(_snap(run_id, RunState.COMPLETED, started, datetime.now())))
    delivery.ship(settle=60)              # superseded: only the last state goes
    assert delivery.pending == 0
    assert wait_until(lambda: _history(run_id), 60, "the task run on the server") == ["COMPLETED"]


def test_a_lasting_state_is_shown_once_it_has_lasted(delivery):
    events, run_id = TaskRunEvents(["nepi-test"]), uuid.uuid4()
    delivery.add_event(events.event(_snap(run_id, RunState.RUNNING, datetime.now())))
    delivery.ship(settle=60)
    assert delivery.pending == 1
    # it is still running after the settle time: it goes out as it is
    wait_until(lambda: delivery.ship(settle=0.2) or delivery.pending == 0, 60, "the state to settle")
    assert wait_until(lambda: _history(run_id), 60, "the task run on the server") == ["RUNNING"]


def test_closing_ships_everything_whatever_its_age(delivery):
    events, run_id = TaskRunEvents(["nepi-test"]), uuid.uuid4()
    delivery.add_event(events.event(_snap(run_id, RunState.PENDING)))
    delivery.ship(settle=0)
    assert delivery.pending == 0
    assert wait_until(lambda: _history(run_id), 60, "the task run on the server") == ["PENDING"]


def _artifacts(flow_run_id: uuid.UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return sorted(a.key for a in found)


def _closing(state_type: str) -> dict:
    return {"type": state_type, "name": state_type.capitalize(), "message": "done",
            "at": datetime.now().astimezone().isoformat(),
            "artifacts": [{"key": "nepi-summary-t", "type": "table", "data": "[]"},
                          {"key": "nepi-report-t", "type": "markdown", "data": "# t"}]}


def test_a_close_tried_again_creates_each_artifact_once(delivery):
    delivery.add_close(_closing("NOT-A-STATE"))   # the server refuses the final state...
    with pytest.raises(httpx.HTTPStatusError):
        delivery.finish()
    delivery.closing = _closing("COMPLETED")      # ... and the next attempt goes through
    delivery.finish()
    assert _artifacts(delivery.flow_run_id) == ["nepi-report-t", "nepi-summary-t"]


def test_a_journal_read_back_does_not_repeat_an_artifact_the_server_has(delivery):
    # the writer created the first artifact, and died before it journaled that
    delivery.api.create_artifact({"key": "nepi-summary-t", "type": "table", "data": "[]",
                                  "flow_run_id": str(delivery.flow_run_id)})
    delivery.add_close(_closing("COMPLETED"))
    delivery.journal.release()
    journal, contents = Journal.adopt(delivery.journal.path)
    later = Delivery(journal, delivery.target, contents)
    later.connect()
    later.finish()
    assert _artifacts(delivery.flow_run_id) == ["nepi-report-t", "nepi-summary-t"]


def test_a_backlog_no_server_could_take_in_time_does_not_hold_the_exit(tmp_path, monkeypatch):
    """At the close, a record far larger than any server could take before the timeout is
    left to the journal at once (the next run's server may not even have answered yet);
    a small one, or one there is time for, is waited for."""
    from types import SimpleNamespace

    from nepi_prefect.orchestration.recorder import _Backlog

    shipping = _unconnected(tmp_path, monkeypatch, "backlog")   # no rate to judge by
    backlog, events = _Backlog(SimpleNamespace(delivery=shipping)), TaskRunEvents(["nepi-test"])
    try:
        for _ in range(1200):
            shipping.add_event(events.event(_snap(uuid.uuid4(), RunState.COMPLETED)))
        assert not backlog.hopeless(2.0)
        for _ in range(9000):
            shipping.add_event(events.event(_snap(uuid.uuid4(), RunState.COMPLETED)))
        assert backlog.hopeless(2.0)
        assert not backlog.hopeless(60.0)
    finally:
        shipping.journal.release()

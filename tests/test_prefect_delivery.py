"""Shipping a record to a real Prefect API: a passing task-run state waits a moment for its
successor (a quick action goes out as its last state only), a state that lasts is shown;
a close that is tried again (in this process or by another) shows each artifact once; the
resource feed waits until the server has caught up with the task runs."""

from __future__ import annotations

import uuid
from datetime import datetime

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, LogFilter,
                                            LogFilterFlowRunId)

from nepi_prefect.execution.recording import RunState
from nepi_prefect.orchestration import delivery as delivery_module
from nepi_prefect.orchestration.delivery import BATCH, Delivery, Target
from nepi_prefect.orchestration.events import Snapshot, TaskRunEvents, log_record
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


def test_a_state_arriving_after_a_newer_one_does_not_take_its_place(delivery):
    """The task-run recorder's upsert (nepi's server compiles it once) keeps the
    newest state as the run's own, and every state in its history."""
    events, run_id = TaskRunEvents(["nepi-test"]), uuid.uuid4()
    started = datetime.now()
    running = events.event(_snap(run_id, RunState.RUNNING, started))
    completed = events.event(_snap(run_id, RunState.COMPLETED, started, datetime.now()))
    delivery.add_event(completed)
    delivery.ship(settle=0)
    wait_until(lambda: _history(run_id) == ["COMPLETED"], 60, "the completed run on the server")
    delivery.add_event(running)   # late, and older
    delivery.ship(settle=0)
    assert wait_until(lambda: len(_history(run_id)) == 2 and _history(run_id), 60,
                      "both states in the history") == ["RUNNING", "COMPLETED"]
    with get_client(sync_client=True) as client:
        assert client.read_task_run(run_id).state.type.value == "COMPLETED"


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


def _log_lines(delivery: Delivery) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[delivery.flow_run_id])))
    return sorted(log.message for log in logs)


def _three_log_lines(delivery: Delivery) -> list[str]:
    """Journal three log lines, two of them alike but for their time; their messages."""
    at = datetime.now().astimezone()
    messages = ["started", "started", "tab\tand null\x00"]
    for n, message in enumerate(messages):
        delivery.add_log(log_record(None, "nepi.test", 20, message, at.replace(microsecond=n)))
    return sorted(message.replace("\x00", "") for message in messages)


def _read_back(delivery: Delivery) -> Delivery:
    delivery.journal.release()
    journal, contents = Journal.adopt(delivery.journal.path)
    later = Delivery(journal, delivery.target, contents)
    later.connect()
    return later


def test_logs_whose_answer_was_lost_are_not_posted_again(delivery):
    expected = _three_log_lines(delivery)
    # posted, and the writer exited before the answer came: no ack in the journal
    delivery._posting_logs(delivery.n_logs)
    delivery.api.post_logs([{**record, "flow_run_id": str(delivery.flow_run_id)}
                            for _, record in delivery.logs])
    later = _read_back(delivery)
    later.ship()
    assert later.pending == 0
    assert _log_lines(delivery) == expected
    later.journal.release()


def test_logs_that_never_reached_the_server_are_posted_by_the_next_shipper(delivery):
    expected = _three_log_lines(delivery)
    delivery._posting_logs(delivery.n_logs)   # and killed before the request went out
    later = _read_back(delivery)
    later.ship()
    assert _log_lines(delivery) == expected
    later.journal.release()


def test_a_log_post_tried_again_in_the_same_process_shows_each_line_once(delivery, monkeypatch):
    expected = _three_log_lines(delivery)
    post = delivery.api.post_logs

    def answer_lost(logs):
        post(logs)
        raise httpx.ReadTimeout("the answer was lost")

    monkeypatch.setattr(delivery.api, "post_logs", answer_lost)
    with pytest.raises(httpx.ReadTimeout):
        delivery.ship()
    monkeypatch.setattr(delivery.api, "post_logs", post)
    delivery.ship()
    assert delivery.pending == 0
    assert _log_lines(delivery) == expected


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


def _resource_event(state: str, guid: int) -> dict:
    return {"id": str(uuid.uuid4()), "occurred": datetime.now().astimezone().isoformat(),
            "event": f"nepi.resource.{state}", "payload": {"state": state.upper()},
            "resource": {"prefect.resource.id": f"nepi.resource.t.r.{guid}"}, "related": []}


def test_the_feed_is_a_journal_stream_of_its_own(tmp_path, monkeypatch):
    """Routine resource events go to the feed, numbered and acknowledged on their own;
    a failure and the task runs do not; a journal read back has each where it was."""
    shipping = _unconnected(tmp_path, monkeypatch, "feed-journal")
    events = TaskRunEvents(["nepi-test"])
    shipping.add_event(events.event(_snap(uuid.uuid4(), RunState.COMPLETED)))
    for guid in range(3):
        shipping.add_event(_resource_event("ready", guid))
    shipping.add_event(_resource_event("failed", 9))
    assert (len(shipping.events), len(shipping.feed), shipping.pending, shipping.run_pending) == \
        (2, 3, 5, 2)
    shipping._accepted(feed=2, upto=2)   # as after a post of the first two
    shipping.flush(sync=True)
    shipping.journal.release()
    journal, contents = Journal.adopt(shipping.journal.path)
    try:
        later = Delivery(journal, shipping.target, contents)
        assert [e["event"] for _, e in later.events] == ["prefect.task-run.Completed",
                                                         "nepi.resource.failed"]
        assert [(n, e["payload"]["state"]) for n, e in later.feed] == [(3, "READY")]
    finally:
        journal.release()


def _feed_on_server(flow_run_id: uuid.UUID) -> tuple[int, datetime | None]:
    """How many of the run's nepi.resource events the server has, and when it received
    the first one posted (the feed is posted in order, so: the oldest)."""
    with get_client(sync_client=True) as client:
        response = client._client.post("/events/filter", json={
            "filter": {"event": {"prefix": ["nepi.resource."]}, "order": "ASC",
                       "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 1})
        response.raise_for_status()
        page = response.json()
    first = page["events"][0]["received"] if page["events"] else None
    return page["total"], datetime.fromisoformat(first) if first else None


def _task_runs_updated(flow_run_id: uuid.UUID) -> list[datetime]:
    """When the server last wrote each of the flow run's task runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=offset)
            found += [run.updated for run in page]
            if len(page) < 200:
                return found
            offset += 200


def test_the_feed_waits_until_the_server_has_caught_up_with_the_task_runs(delivery):
    """A burst of task runs and of routine resource events: the feed goes out only once
    at most a batch of task runs is still to be written, so the run page fills first;
    then the final state is set, the whole feed follows, and the journal goes."""
    runs, events = 1200, TaskRunEvents(["nepi-test"])
    for guid in range(runs):
        delivery.add_event(events.event(_snap(uuid.uuid4(), RunState.COMPLETED)))
        delivery.add_event(_resource_event("ready", guid))
    delivery.add_close({"type": "COMPLETED", "name": "Completed", "message": "done",
                        "at": datetime.now().astimezone().isoformat(), "artifacts": []})
    delivery.ship()
    assert delivery.run_pending == 0
    assert delivery.finish() and not delivery.journal.path.exists()
    _, first = wait_until(lambda: (found := _feed_on_server(delivery.flow_run_id))[0] == runs
                          and found, 300, "the whole feed on the server")
    updated = wait_until(lambda: (found := _task_runs_updated(delivery.flow_run_id))
                         and len(found) == runs and found, 300, "every task run on the server")
    written_before_the_feed = sum(moment < first for moment in updated)
    assert written_before_the_feed >= runs - BATCH, (written_before_the_feed, runs)


def test_a_journal_read_back_holds_its_feed_until_the_writers_task_runs_show(delivery,
                                                                             monkeypatch):
    """The process that ships a left-behind journal does not know what its writer still
    has in the server's queue: the feed waits until the last task run the writer posted
    shows on the server; and not forever (a server restarted meanwhile never shows it)."""
    events = TaskRunEvents(["nepi-test"])
    delivery.add_event(events.event(_snap(uuid.uuid4(), RunState.COMPLETED)))
    delivery._accepted(events=1, upto=1)   # posted, the writer said; the server never wrote it
    delivery.add_event(_resource_event("ready", 1))
    delivery.flush(sync=True)
    delivery.journal.release()
    journal, contents = Journal.adopt(delivery.journal.path)
    later = Delivery(journal, delivery.target, contents)
    try:
        later.connect()
        later.ship_feed(wait=False)
        assert len(later.feed) == 1
        monkeypatch.setattr(delivery_module, "FEED_PATIENCE", 0.5)
        later.ship_feed(wait=True)
        assert not later.feed
    finally:
        journal.release()


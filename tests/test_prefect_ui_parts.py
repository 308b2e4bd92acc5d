"""Issue 10's record parts without a server: final state, artifacts, events, log tails."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from nepi_prefect.execution.recording import ResourceChange
from nepi_prefect.orchestration.artifacts import (
    artifact_key,
    closing_artifacts,
    report_markdown,
    summary_rows,
)
from nepi_prefect.orchestration.events import crashed, metric_events, resource_event
from nepi_prefect.orchestration.recorder import PrefectRecorder
from nepi_prefect.orchestration.story import TAIL, read_tail, story

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _res(guid, name, state, start=None, end=None, end_kind="finish", metrics=None, failure=None):
    times = {f"{k}_time": None for k in ("discover", "provision", "ready", "start", "stop",
                                         "finish", "failed", "release")}
    times["ready_time"] = T0.isoformat()
    if start is not None:
        times["start_time"] = (T0 + timedelta(seconds=start)).isoformat()
    if end is not None:
        times[f"{end_kind}_time"] = (T0 + timedelta(seconds=end)).isoformat()
    return {"guid": guid, "name": name, "rtype": "LinuxPing", "state": state, "times": times,
            "traces": {"stdout": f"/r/{name}/stdout"}, "metrics": metrics or {},
            "failure": failure}


SUMMARY = {"exp_id": "Ping_Test", "run_id": "r1", "state": "FAILED", "run_dir": "/r",
           "failure": "critical resource LinuxPing 2 FAILED",
           "resources": [_res(1, "ping", "FINISHED", 1, 3.5, metrics={"rtt_avg_ms": 0.05,
                                                                      "loss_pct": 0}),
                         _res(2, "client", "FAILED", 1, 2, "failed", failure="exit code 8"),
                         _res(3, "later", "READY")]}


def test_final_names_the_failed_resource_and_fails_lost_results():
    recorder = PrefectRecorder()
    state, message = recorder._final(SUMMARY)
    assert state == "FAILED"
    assert message.startswith("experiment failed: client (LinuxPing 2) FAILED: exit code 8")
    # the experiment's failure is kept when it says more, dropped when it repeats
    assert message == ("experiment failed: client (LinuxPing 2) FAILED: exit code 8; "
                       "critical resource LinuxPing 2 FAILED")
    repeated = {**SUMMARY, "failure": "critical resource LinuxPing 2 FAILED: exit code 8"}
    assert recorder._final(repeated)[1] == \
        "experiment failed: client (LinuxPing 2) FAILED: exit code 8"
    state, message = recorder._final({"state": "INCOMPLETE", "lost": ["summary.json: disk full"],
                                      "resources": []})
    assert (state, message) == ("FAILED", "results lost: summary.json: disk full")
    assert recorder._final({"state": "COMPLETED", "resources": [{}, {}]}) == \
        ("COMPLETED", "2 resources")


def test_the_recorder_names_its_flow_run_as_told():
    ec = SimpleNamespace(exp_id="ping", run_id="123")
    assert PrefectRecorder()._target(ec).flow_run_name == "ping-123"
    target = PrefectRecorder(name="ping-interval=0.2-r1", tags=["campaign:c"])._target(ec)
    assert target.flow_run_name == "ping-interval=0.2-r1"
    assert target.tags == ["ping", "nepi-prefect", "campaign:c"]


def test_artifact_keys_are_per_experiment_and_valid_for_prefect():
    assert artifact_key("nepi-summary", "Ping_Test 2") == "nepi-summary-ping-test-2"
    assert artifact_key("nepi-summary", "") == "nepi-summary"
    keys = [a["key"] for a in closing_artifacts(SUMMARY)]
    assert keys == ["nepi-summary-ping-test", "nepi-report-ping-test"]


def test_summary_rows_one_per_resource_metrics_in_numeric_columns():
    rows = {row["name"]: row for row in summary_rows(SUMMARY)}
    assert list(rows["ping"]) == ["name", "rtype", "guid", "state", "duration_s", "loss_pct",
                                  "rtt_avg_ms", "failure", "traces"]
    assert rows["ping"]["duration_s"] == 2.5 and rows["ping"]["rtt_avg_ms"] == 0.05
    assert rows["client"]["duration_s"] == 1.0 and rows["client"]["rtt_avg_ms"] is None
    assert rows["later"]["duration_s"] is None
    json.dumps(list(rows.values()))


def test_report_has_verdict_timeline_metrics_failure_and_traces():
    text = report_markdown(SUMMARY)
    assert text.startswith("# Ping_Test run r1: **FAILED**")
    assert "- client (LinuxPing 2) FAILED: exit code 8" in text
    assert "| ping | LinuxPing | FINISHED | 0.00 | 1.00 |  | 3.50 |  |  |" in text
    assert "| ping | rtt_avg_ms | 0.05 |" in text
    assert "- client: stdout `/r/client/stdout`" in text


def _change(state, **kw):
    return ResourceChange(2, "client", "LinuxPing", state, T0, run_id=uuid.uuid4(), **kw)


def test_resource_and_metric_events_relate_experiment_run_and_task_run():
    change = _change("FAILED", failure="exit code 8", metrics={"loss_pct": 100, "note": "x",
                                                               "ok": True})
    event = resource_event(change, "ping", "r1")
    assert event["event"] == "nepi.resource.failed"
    assert event["resource"]["prefect.resource.id"] == "nepi.resource.ping.r1.2"
    assert event["payload"]["failure"] == "exit code 8"
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert roles == {"nepi-experiment": "nepi.experiment.ping", "nepi-run": "nepi.run.ping.r1",
                     "task-run": f"prefect.task-run.{change.run_id}"}
    assert datetime.fromisoformat(event["occurred"]).tzinfo is not None
    metrics = metric_events(change, "ping", "r1")   # numbers only: not "note", not a bool
    assert [(m["payload"]["metric"], m["payload"]["value"]) for m in metrics] == [("loss_pct", 100)]
    assert metrics[0]["related"][0]["prefect.resource.id"] == "nepi.resource.ping.r1.2"
    # a crashed run's journal holds these too: only task runs are closed as Crashed
    assert crashed(event, datetime.now(timezone.utc), "gone") is None


def test_story_logs_states_failure_metrics_and_bounded_masked_tails(tmp_path):
    out = tmp_path / "stdout"
    out.write_text("".join(f"line {i}\n" for i in range(2000)) + "the end hunter2\n")
    mask = lambda text: text.replace("hunter2", "********")   # noqa: E731
    assert story(_change("STARTED"), mask) == [(logging.INFO, "client is STARTED")]
    assert story(_change("FAILED", failure="exit code 8 hunter2"), mask) == \
        [(logging.ERROR, "client FAILED: exit code 8 ********")]
    lines = story(_change("RELEASED", metrics={"rtt_ms": 1.5}, traces={"stdout": str(out)}), mask)
    assert lines[1] == (logging.INFO, "client measured: rtt_ms=1.5")
    tail = lines[2][1]
    assert tail.endswith("the end ********") and "hunter2" not in tail
    assert "line 0\n" not in tail and len(tail) < TAIL + 200
    assert read_tail(str(tmp_path / "missing")) == ""


def test_resource_events_setting_says_what_is_valid(monkeypatch):
    import pytest

    from nepi_prefect import settings

    for text, meant in (("", "all"), ("1", "all"), ("0", "none"), ("Failures", "failures")):
        monkeypatch.setenv(settings.RESOURCE_EVENTS_ENV, text)
        assert settings.resource_events() == meant
    monkeypatch.setenv(settings.RESOURCE_EVENTS_ENV, "some")
    with pytest.raises(ValueError, match="expected one of all, failures, none"):
        PrefectRecorder()


def test_failures_mode_announces_only_failures_and_metrics(monkeypatch):
    import queue

    from nepi_prefect import settings

    monkeypatch.setenv(settings.RESOURCE_EVENTS_ENV, "failures")
    recorder = PrefectRecorder()
    recorder._pipeline = SimpleNamespace(queue=queue.SimpleQueue())
    for state in ("DISCOVERED", "READY", "STARTED", "FAILED"):
        recorder.resource_changed(_change(state, failure="exit 8" if state == "FAILED" else None))
    recorder.resource_changed(_change("RELEASED", metrics={"rtt_ms": 2.0}))
    items = []
    while not recorder._pipeline.queue.empty():
        items.append(recorder._pipeline.queue.get())
    assert [i[1]["event"] for i in items if i[0] == "event"] == ["nepi.resource.failed",
                                                                  "nepi.metric"]
    # the logs tell every state but the deploy's inner steps
    assert [i[4] for i in items if i[0] == "log"] == [
        "client is READY", "client is STARTED", "client FAILED: exit 8", "client is RELEASED",
        "client measured: rtt_ms=2.0"]

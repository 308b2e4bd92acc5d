"""The local server stores every event once, however often it arrives, and its log
lines (server_writes).

Prefect's own SQLite writer failed a whole flush when a slice of it held only events
already stored, and after five tries dropped it with every new event queued behind:
a client that posts again what it could not confirm lost events it never repeated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import httpx
from prefect.server.services import task_run_recorder

from nepi_prefect.orchestration import server_writes
from tests.fixtures.prefect_api import nepi_cli
from tests.helpers import wait_until


def an_event(tag: str, n: int) -> dict:
    return {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
            "event": f"nepi.test.{tag}",
            "resource": {"prefect.resource.id": f"nepi.test.{tag}.{n}"},
            "related": [{"prefect.resource.id": f"nepi.run.{tag}",
                         "prefect.resource.role": "nepi-run"}]}


def stored(api: str, tag: str, by: dict | None = None) -> list[str]:
    """The ids of the stored events named ``nepi.test.<tag>`` (and matching ``by``),
    paged (the API gives 50 at most a page)."""
    page = httpx.post(f"{api}/events/filter", json={
        "filter": {"event": {"name": [f"nepi.test.{tag}"]},
                   "occurred": {"since": "2000-01-01T00:00:00Z"}, **(by or {})}, "limit": 50},
        timeout=30).json()
    assert "events" in page, page
    ids = [event["id"] for event in page["events"]]
    while page.get("next_page"):
        page = httpx.get(page["next_page"], timeout=30).json()
        ids += [event["id"] for event in page["events"]]
    return ids


def wait_for(api: str, tag: str, count: int) -> list[str]:
    """The stored ids once there are ``count`` of them (at most 120 s)."""
    def enough() -> list[str]:
        ids = stored(api, tag)
        return ids if len(ids) >= count else []
    return wait_until(enough, 120, lambda: f"{count} events {tag}: {len(stored(api, tag))} stored",
                      interval=0.5)


def test_events_posted_again_cost_nothing_flushed_with_them(local_home):
    subprocess.run(nepi_cli() + ["server", "start"], env=local_home.env, check=True,
                   capture_output=True, timeout=300)
    api = local_home.api_url
    tag = uuid.uuid4().hex[:8]
    first = [an_event(tag, n) for n in range(300)]
    httpx.post(f"{api}/events", json=first, timeout=60).raise_for_status()
    assert len(wait_for(api, tag, 300)) == 300

    # the server's messaging forgets the ids of all but the last 1000 events it saw
    others = [an_event(f"{tag}-other", n) for n in range(1000)]
    httpx.post(f"{api}/events", json=others, timeout=60).raise_for_status()
    # posted again with new ones, in one request: the same flushes on the server,
    # slices of nothing but stored events first, and one new event twice over
    new = [an_event(tag, n) for n in range(300, 320)]
    httpx.post(f"{api}/events", json=first + new + new[:1], timeout=60).raise_for_status()
    ids = wait_for(api, tag, 320)

    assert sorted(ids) == sorted(event["id"] for event in first + new)   # each once
    # with their related resources, which filters match
    assert sorted(stored(api, tag, {"related": {"id": [f"nepi.run.{tag}"]}})) == sorted(ids)
    log = (local_home.home / "nepi-server.log").read_text(errors="replace")
    assert "dropping" not in log and "IntegrityError" not in log, log[-3000:]


def test_log_lines_are_stored_as_sent(local_home):
    subprocess.run(nepi_cli() + ["server", "start"], env=local_home.env, check=True,
                   capture_output=True, timeout=300)
    api = local_home.api_url
    tag = uuid.uuid4().hex[:8]
    flow = httpx.post(f"{api}/flows/", json={"name": f"logs-{tag}"}, timeout=60).json()
    flow_run = httpx.post(f"{api}/flow_runs/", json={"flow_id": flow["id"], "name": tag},
                          timeout=60).json()
    start = datetime.now(timezone.utc)
    sent = [{"name": f"nepi.{tag}", "level": 20 + n % 3 * 10, "message": f"line {n}",
             "timestamp": (start + timedelta(milliseconds=n)).isoformat(),
             "flow_run_id": flow_run["id"]} for n in range(700)]
    sent[5]["message"] = "a null\x00byte"   # Prefect strips them (PostgreSQL refuses them)
    httpx.post(f"{api}/logs/", json=sent, timeout=60).raise_for_status()

    logs = []
    while len(logs) < len(sent) + 200:   # pages of 200, to the last
        page = httpx.post(f"{api}/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [flow_run["id"]]}}, "sort": "TIMESTAMP_ASC",
            "offset": len(logs), "limit": 200}, timeout=30).json()
        logs += page
        if len(page) < 200:
            break
    assert [(log["name"], log["level"], log["message"]) for log in logs] == \
        [(s["name"], s["level"], s["message"].replace("\x00", "")) for s in sent]


INSTALLED = """
from prefect.server.models import logs
from prefect.server.services import task_run_recorder
from nepi_prefect.orchestration import server_writes
prefects = task_run_recorder._record_bulk_task_run_events
server_writes.install()
print(logs.create_logs is server_writes.create_logs,
      task_run_recorder._insert_task_run_states is server_writes.insert_task_run_states,
      task_run_recorder._record_bulk_task_run_events is not prefects)
"""


def test_only_a_sqlite_server_gets_the_writers_of_logs_and_states(tmp_path):
    def installed(url: str) -> str:
        env = {**os.environ, "PREFECT_HOME": str(tmp_path),
               "PREFECT_API_DATABASE_CONNECTION_URL": url}
        done = subprocess.run([sys.executable, "-c", INSTALLED], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert installed(f"sqlite+aiosqlite:///{tmp_path}/prefect.db") == "True True True"
    # never tried here (no PostgreSQL): Prefect's own writers stay
    assert installed("postgresql+asyncpg://nobody@127.0.0.1:1/prefect") == "False False False"


def test_a_task_run_recorder_it_does_not_know_keeps_its_own_upserts(monkeypatch):
    prefects = task_run_recorder._record_bulk_task_run_events
    monkeypatch.setattr(server_writes, "MULTI_ROW_UPSERT", "a line another Prefect lacks")
    assert server_writes.record_task_runs_with_a_cached_upsert() is False
    assert task_run_recorder._record_bulk_task_run_events is prefects

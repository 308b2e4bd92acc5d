"""The few Prefect REST endpoints the record uses, over one httpx client.

Plain HTTP rather than Prefect's client: the recorder must not import Prefect
(seconds on a busy machine) and posts events and logs in batches, which the
public client has no call for. Endpoints as documented in Prefect 3's REST API:
``POST /flows/``, ``/flow_runs/``, ``/flow_runs/{id}/set_state``, ``/task_runs/``,
``/task_runs/filter``, ``/events``, ``/events/filter``, ``/logs/``, ``/logs/filter``, ``/artifacts/``.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx
import orjson

FLOW_NAME = "nepi-experiment"

#: pauses before posting again when the server answers 503: SQLite refuses a write
#: at once when another one holds the lock, and it is usually free a moment later
#: (Prefect's own client waits 2, 4, 8... s: far longer than the lock is held)
BUSY_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)


class PrefectAPI:
    """A connection to one Prefect API."""

    def __init__(self, url: str, api_key: str | None = None, auth_string: str | None = None,
                 timeout: float = 30.0):
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        elif auth_string:
            headers["authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + "/", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: Any) -> Any:
        content = orjson.dumps(body)
        for pause in (*BUSY_RETRIES, None):
            response = self._http.post(path, content=content)
            if response.status_code != 503 or pause is None:
                break
            time.sleep(pause)
        response.raise_for_status()
        return response.json() if response.content else None

    def health(self) -> bool:
        try:
            return self._http.get("health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def flow_id(self, name: str = FLOW_NAME) -> uuid.UUID:
        """The flow's id (the server creates it by name, or returns the existing one)."""
        return uuid.UUID(self._post("flows/", {"name": name})["id"])

    def create_flow_run(self, flow_id: uuid.UUID, name: str, tags: list[str],
                        parameters: dict[str, Any], key: str,
                        parent_task_run_id: uuid.UUID | None = None) -> uuid.UUID:
        """A RUNNING flow run (the server stamps its start: a state cannot be back-dated);
        ``key`` makes creating it again a no-op."""
        body = {"flow_id": str(flow_id), "name": name, "tags": tags, "parameters": parameters,
                "idempotency_key": key,
                "state": {"type": "RUNNING", "name": "Running"}}
        if parent_task_run_id is not None:
            body["parent_task_run_id"] = str(parent_task_run_id)
        return uuid.UUID(self._post("flow_runs/", body)["id"])

    def create_task_run(self, flow_run_id: uuid.UUID, name: str, tags: list[str],
                        key: str) -> uuid.UUID:
        """A task run in ``flow_run_id`` (the one a subflow run hangs from)."""
        body = {"flow_run_id": str(flow_run_id), "name": name, "task_key": f"nepi-{FLOW_NAME}",
                "dynamic_key": key, "tags": tags, "state": {"type": "PENDING", "name": "Pending"}}
        return uuid.UUID(self._post("task_runs/", body)["id"])

    def set_flow_run_state(self, flow_run_id: uuid.UUID, state_type: str, name: str,
                           message: str) -> None:
        state = {"type": state_type, "name": name, "message": message or None}
        self._post(f"flow_runs/{flow_run_id}/set_state", {"state": state, "force": True})

    def flow_run_state(self, flow_run_id: uuid.UUID) -> tuple[str | None, str | None]:
        """The flow run's state type and message."""
        response = self._http.get(f"flow_runs/{flow_run_id}", timeout=10)
        response.raise_for_status()
        state = response.json().get("state") or {}
        return state.get("type"), state.get("message")

    def flow_runs_tagged(self, tag: str, limit: int = 200) -> list[dict[str, Any]]:
        """Flow runs carrying ``tag``, newest first (``reattach`` finds a run's by it)."""
        return self._post("flow_runs/filter", {"flow_runs": {"tags": {"all_": [tag]}},
                                               "sort": "EXPECTED_START_TIME_DESC",
                                               "limit": min(limit, 200)})

    def post_events(self, events: list[dict[str, Any]]) -> None:
        self._post("events", events)

    def post_logs(self, logs: list[dict[str, Any]]) -> None:
        self._post("logs/", logs)

    def logs_between(self, flow_run_id: uuid.UUID, since: str, until: str) -> list[dict[str, Any]]:
        """The flow run's log lines stamped from ``since`` to ``until`` (ISO times, both
        included), oldest first."""
        found: list[dict[str, Any]] = []
        while True:
            page = self._post("logs/filter", {
                "logs": {"flow_run_id": {"any_": [str(flow_run_id)]},
                         "timestamp": {"after_": since, "before_": until}},
                "sort": "TIMESTAMP_ASC", "offset": len(found), "limit": 200})
            found += page
            if len(page) < 200:   # the API rejects a limit above 200
                return found

    def create_artifact(self, artifact: dict[str, Any]) -> None:
        self._post("artifacts/", artifact)

    def has_artifact(self, flow_run_id: uuid.UUID, key: str) -> bool:
        """The flow run has an artifact of that key."""
        return bool(self._post("artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "key": {"any_": [key]}},
            "limit": 1}))

    def task_run_states(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
        """Task run id -> (state type, state timestamp) of those the server has."""
        found = {}
        for i in range(0, len(ids), 200):   # the API rejects a limit above 200
            chunk = ids[i:i + 200]
            runs = self._post("task_runs/filter", {
                "task_runs": {"id": {"any_": [str(x) for x in chunk]}}, "limit": len(chunk)})
            for run in runs:
                state = run.get("state") or {}
                found[uuid.UUID(run["id"])] = (state.get("type"), state.get("timestamp"))
        return found

    def events_stored(self, ids: list[str], since: str, until: str) -> set[str]:
        """Which of these events (that occurred between ``since`` and ``until``, ISO
        times) the server's event persister has written."""
        page = self._post("events/filter", {
            "filter": {"id": {"id": ids}, "occurred": {"since": since, "until": until}},
            "limit": len(ids)})
        return {event["id"] for event in (page or {}).get("events", [])}

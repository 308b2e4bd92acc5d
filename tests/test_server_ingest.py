"""The local server's intake of events (server_ingest): its limits are its own
settings, read once and still enforced; the consumers share each event's parse,
each with an object of its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone

import httpx
from prefect.server.events.schemas.events import ReceivedEvent

from tests.fixtures.prefect_api import nepi_cli
from tests.test_server_writes import wait_for


def an_event(tag: str, name: str = "", labels: int = 0, related: int = 1) -> dict:
    """A ``nepi.test.<tag>`` event (``name`` appended), its resource with ``labels``
    labels besides its id, with ``related`` related resources."""
    return {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
            "event": f"nepi.test.{tag}{name}",
            "resource": {"prefect.resource.id": f"nepi.test.{tag}",
                         **{f"label-{n}": "x" for n in range(labels)}},
            "related": [{"prefect.resource.id": f"nepi.run.{tag}.{n}",
                         "prefect.resource.role": "nepi-run"} for n in range(related)]}


def test_the_server_refuses_events_beyond_its_own_limits(local_home):
    limits = {"PREFECT_SERVER_EVENTS_MAXIMUM_LABELS_PER_RESOURCE": "4",
              "PREFECT_SERVER_EVENTS_MAXIMUM_EVENT_NAME_LENGTH": "30",
              "PREFECT_SERVER_EVENTS_MAXIMUM_RELATED_RESOURCES": "2"}
    subprocess.run(nepi_cli() + ["server", "start"], env={**local_home.env, **limits},
                   check=True, capture_output=True, timeout=300)
    tag = uuid.uuid4().hex[:8]   # "nepi.test.<tag>" is 18 characters

    def post(event: dict) -> int:
        return httpx.post(f"{local_home.api_url}/events", json=[event], timeout=60).status_code

    within = [an_event(tag, labels=3), an_event(tag, name="x" * 12), an_event(tag, related=2)]
    beyond = [an_event(tag, labels=4), an_event(tag, name="x" * 13), an_event(tag, related=3)]
    for _ in range(2):   # read once, and the same on every event after
        assert [post(event) for event in beyond] == [422, 422, 422]
    assert [post(event) for event in within] == [204, 204, 204]
    # two of the three are named nepi.test.<tag>: wait for both (the server writes them
    # after it accepted them, in its own time)
    stored = wait_for(local_home.api_url, tag, 2) + \
        wait_for(local_home.api_url, f"{tag}{'x' * 12}", 1)
    assert sorted(stored) == sorted(event["id"] for event in within)


SHARED_PARSE = """
import json, sys
from prefect.server.events.schemas.events import Event, ReceivedEvent
from nepi_prefect.orchestration import server_ingest
data = sys.stdin.buffer.read()
posted = Event.model_validate_json(data)
at = ReceivedEvent.model_validate_json(data).received
prefects = [posted.receive(at).model_dump_json(), sorted(posted.receive().model_fields_set)]
server_ingest.install()
nepis = [posted.receive(at).model_dump_json(), sorted(posted.receive().model_fields_set)]
first, second = ReceivedEvent.model_validate_json(data), ReceivedEvent.model_validate_json(data)
again = ReceivedEvent.model_validate_json(bytes(bytearray(data)))   # equal bytes, another object
from_text = ReceivedEvent.model_validate_json(data.decode())
second.event = "changed by one consumer"
print(json.dumps([first == again == from_text, first is not again, first.event,
                  first.model_dump_json().encode() == data, nepis == prefects]))
"""


def test_each_consumer_gets_its_own_event_from_the_shared_parse():
    """And a received event is the one Prefect's ``Event.receive`` makes."""
    event = {**an_event("shared", related=3), "received": datetime.now(timezone.utc).isoformat(),
             "payload": {"nested": [1, {"two": 2}]}}
    data = ReceivedEvent.model_validate(event).model_dump_json().encode()
    done = subprocess.run([sys.executable, "-c", SHARED_PARSE], input=data, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split("\n")[-2] == '[true, true, "nepi.test.shared", true, true]'

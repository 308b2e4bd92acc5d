"""How the local server takes in events: its limits read once, each event parsed once.

Two costs of Prefect 3.8.8's event ingestion do no work that the record needs, and
with a large record they are a quarter of the server's time:

- **Settings reads.** The event validators read their limits (labels per resource,
  event name length, related resources) through Prefect's settings objects, for
  every resource of every event, at every validation; each read runs an import
  and a chain of ``Settings.__getattribute__``. So does the triggers' causal
  ordering, once per event. 1000 trivial RMs: 12 % of the server's CPU went there.
- **Parses.** Each consumer of the server's event topic (the event persister, the
  task-run recorder, the triggers, and the UI's live stream while a page listens)
  gets the same JSON bytes and parses them again with ``ReceivedEvent.
  model_validate_json``: 15 % of the server's CPU. And each event posted is
  validated twice before that: as it comes in, and again as ``Event.receive``
  rebuilds it from a dump of itself (4 %).

A server's settings do not change while it runs, so here each is read once
(:class:`FixedSettings`, :class:`FixedSetting`). And the first consumer's parse of a
message serves the others: :func:`parse_once` keeps the last :data:`PARSES_KEPT`
events by their bytes (the topic hands each consumer the same bytes object) and
gives each consumer its own shallow copy, as a parse would give it its own object;
and :func:`receive` builds the received event from the fields just validated.
:func:`install` puts them in place; ``server_main`` calls it.
"""

from __future__ import annotations

from typing import Any, Callable

import prefect.settings
from prefect.server.events import ordering
from prefect.server.events.schemas import events as event_schemas
from prefect.server.events.schemas.events import Event, ReceivedEvent
from prefect.settings import get_current_settings
from prefect.settings.legacy import Setting
from pydantic import BaseModel

#: parsed events kept for the consumers still to read them (a consumer that lags
#: further behind parses again, as without this)
PARSES_KEPT = 2048


class FixedSettings:
    """A settings object whose attributes are each read once, sections included."""

    def __init__(self, settings: BaseModel) -> None:
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._settings, name)
        if isinstance(value, BaseModel):
            value = FixedSettings(value)
        setattr(self, name, value)  # later reads find it in the instance, not here
        return value


class FixedSetting(Setting):
    """A legacy ``PREFECT_*`` setting whose value is read once, on first use."""

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting.name, setting.default(), setting._type, setting.accessor)
        self._read: list[Any] = []

    def value(self) -> Any:
        if not self._read:
            self._read.append(super().value())
        return self._read[0]


def fixed_current_settings() -> Callable[[], FixedSettings]:
    """A ``get_current_settings`` that reads the server's settings once, on first use
    (inside the server's own settings context)."""
    fixed: list[FixedSettings] = []

    def current() -> FixedSettings:
        if not fixed:
            fixed.append(FixedSettings(get_current_settings()))
        return fixed[0]

    return current


_parse_json = ReceivedEvent.model_validate_json.__func__
_parsed: dict[bytes, ReceivedEvent] = {}


def parse_once(cls: type[ReceivedEvent], json_data: str | bytes | bytearray,
               **options: Any) -> ReceivedEvent:
    """``ReceivedEvent.model_validate_json`` that parses each message's bytes once."""
    if cls is not ReceivedEvent or options or not isinstance(json_data, bytes):
        return _parse_json(cls, json_data, **options)
    event = _parsed.get(json_data)
    if event is None:
        event = _parsed[json_data] = _parse_json(cls, json_data)
        if len(_parsed) > PARSES_KEPT:
            del _parsed[next(iter(_parsed))]
    return event.model_copy()


def receive(self: Event, received: Any = None) -> ReceivedEvent:
    """``Event.receive`` without validating again the fields validated as they came in."""
    fields = dict(self.__dict__)
    if received is not None:
        fields["received"] = received
    return ReceivedEvent.model_construct(**fields)   # ``received`` defaults to now


def install() -> None:
    """Read the event validators' and the causal ordering's settings once, receive
    events without validating them again, and let the event topic's consumers share
    each event's parse."""
    event_schemas.get_current_settings = ordering.get_current_settings = fixed_current_settings()
    event_schemas.PREFECT_EVENTS_MAXIMUM_RELATED_RESOURCES = FixedSetting(
        prefect.settings.PREFECT_EVENTS_MAXIMUM_RELATED_RESOURCES)
    # the name-length validator imports its setting from prefect.settings at each call
    prefect.settings.PREFECT_SERVER_EVENTS_MAXIMUM_EVENT_NAME_LENGTH = FixedSetting(
        prefect.settings.PREFECT_SERVER_EVENTS_MAXIMUM_EVENT_NAME_LENGTH)
    ReceivedEvent.model_validate_json = classmethod(parse_once)
    Event.receive = receive

"""ns-3's TypeId registry, extracted once and cached as JSON.

Reading the registry needs ``from ns import ns`` (seconds to tens of seconds),
so it is read once per installed ns3 version, in a simulator process, and kept
in ``$NEPI_PREFECT_NS3_CACHE`` (default ``~/.cache/nepi-prefect``). ``describe``,
``validate`` and ``types`` then read only the JSON.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from typing import Any

from nepi_prefect import settings
from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import AttributeValueError

#: attribute kinds that are not values (callbacks, object containers): not offered
_NOT_VALUES = {"ns3::CallbackValue", "ns3::ObjectPtrContainerValue", "ns3::ObjectVectorValue",
               "ns3::ObjectMapValue"}
_ATTR_SET, _ATTR_CONSTRUCT = 2, 4

_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
#: the string forms ns-3 parses; anything else would abort the simulator (NS_FATAL_ERROR)
_SYNTAX = {
    "ns3::TimeValue": (re.compile(rf"^\s*{_NUMBER}\s*(y|d|h|min|s|ms|us|ns|ps|fs)?\s*$"),
                       'a time such as "2ms", "1.5s", "+100ns"'),
    "ns3::DataRateValue": (re.compile(rf"^\s*{_NUMBER}\s*([kKMG]i?)?(bps|b/s|Bps|B/s)?\s*$"),
                           'a data rate such as "5Mbps", "100kb/s", "1Gbps"'),
    "ns3::QueueSizeValue": (re.compile(r"^\s*\d+\s*(p|B|[kKMG]i?B)\s*$"),
                            'a queue size such as "100p" (packets) or "64KB"'),
}


class Ns3Attribute(Attribute):
    """An ns-3 attribute: its value is checked the way ns-3 will parse it."""

    def __init__(self, *args: Any, value_type: str = "", **kwargs: Any):
        self.value_type = value_type
        super().__init__(*args, **kwargs)

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        syntax = _SYNTAX.get(self.value_type)
        if value is not None and syntax is not None and not syntax[0].match(str(value)):
            raise AttributeValueError(
                f"attribute {self.name!r}: got {value!r}, expected {syntax[1]} "
                f"(ns-3 {self.value_type.removeprefix('ns3::')})")
        return value


def ns3_version() -> str | None:
    """The installed ns3 wheel's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("ns3")
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_path(version: str) -> str:
    return os.path.join(settings.ns3_cache_dir(), f"ns3-registry-{version}.json")


@functools.cache
def load() -> dict[str, Any]:
    """The registry of the installed ns3 (``{"version", "types"}``); empty without ns3.

    A failed extraction is remembered (functools.cache keeps the result): asking
    again in the same process must not pay the slow import again.
    """
    version = ns3_version()
    if version is None:
        return {"version": None, "types": {}, "error": "the ns3 wheel is not installed"}
    path = cache_path(version)
    if not os.path.exists(path):
        try:
            extract_to(path)
        except Exception as exc:
            logging.getLogger("nepi_prefect.ns3").warning(
                "could not read ns-3's type registry: %s", exc)
            return {"version": version, "types": {}, "error": str(exc)}
    with open(path) as f:
        return json.load(f)


def extract_to(path: str) -> None:
    """Read the registry in a simulator process and write it to ``path`` atomically."""
    from nepi_prefect.resources.ns3.client import SimulatorProcess

    proc = SimulatorProcess()
    try:
        data = proc.request("registry", timeout=300)
    finally:
        proc.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


def attribute(spec: dict) -> Ns3Attribute | None:
    """A NEPI attribute for one ns-3 attribute, or None if it cannot be set from text."""
    value_type = spec["value_type"]
    if value_type in _NOT_VALUES or not spec["flags"] & (_ATTR_SET | _ATTR_CONSTRUCT):
        return None
    help_ = spec["help"] + (" (deprecated in ns-3)" if spec.get("deprecated") else "")
    kind, default, allowed, rng = _typed(value_type, spec["underlying"], spec["initial"])
    return Ns3Attribute(spec["name"], help_, type=kind, default=default, allowed=allowed,
                        range=rng, flags=Flags.Design, value_type=value_type)


def _typed(value_type: str, underlying: str, initial: str) -> tuple:
    """(type, default, allowed, range) of an ns-3 value type."""
    if value_type == "ns3::BooleanValue":
        return Types.Bool, initial == "true", None, None
    if value_type in ("ns3::UintegerValue", "ns3::IntegerValue"):
        low, high = _bounds(underlying, int)
        return Types.Integer, _number(initial, int), None, (low, high)
    if value_type == "ns3::DoubleValue":
        low, high = _bounds(underlying, float)
        return Types.Double, _number(initial, float), None, (low, high)
    if value_type.startswith("ns3::EnumValue"):  # EnumValue<ns3::RateErrorModel::ErrorUnit>
        allowed = [a for a in underlying.split("|") if a]
        if allowed:
            return Types.Enumerate, initial if initial in allowed else None, allowed, None
    return Types.String, initial if initial not in ("", "0") or value_type != "ns3::PointerValue" \
        else None, None, None


def _bounds(underlying: str, kind: type) -> tuple[Any, Any]:
    match = re.search(r"(\S+):(\S+)$", underlying or "")
    if not match:
        return None, None
    low, high = (_number(v, kind) for v in match.groups())
    # The type's own limits (1.79e308, 2**64-1) say nothing: leave them out.
    if kind is float:
        return (None if low is None or abs(low) > 1e300 else low,
                None if high is None or abs(high) > 1e300 else high)
    return low, high


def _number(text: str, kind: type) -> Any:
    for convert in ((int, lambda t: int(float(t))) if kind is int else (float,)):
        try:
            return convert(text)
        except (TypeError, ValueError, OverflowError):
            continue
    return None

"""Time helpers with NEPI's names.

Dates are naive local ``datetime`` objects, as in NEPI. A *date string* is
either relative to now (``"0s"``, ``"1.5s"``, ``"2m"``, ``"1h"``,
``"100ms"``, ``"250us"``) or absolute in the :func:`tsformat` layout
(``"20261121093000123456"``).
"""

from __future__ import annotations

import datetime
import re

__all__ = ["tnow", "tdiff", "tdiffsec", "stabsformat", "tsformat", "parse_delay", "RELATIVE_FORMS"]

_TS_LAYOUT = "%Y%m%d%H%M%S%f"
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(h|m|s|ms|us)\s*$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
RELATIVE_FORMS = '"0s", "1.5s", "2m", "1h", "100ms", "250us"'


def tnow() -> datetime.datetime:
    """The current local time."""
    return datetime.datetime.now()


def tdiff(date1: datetime.datetime, date2: datetime.datetime) -> datetime.timedelta:
    """``date1 - date2`` as a timedelta."""
    return date1 - date2


def tdiffsec(date1: datetime.datetime, date2: datetime.datetime) -> float:
    """``date1 - date2`` in seconds."""
    return (date1 - date2).total_seconds()


def tsformat(date: datetime.datetime | None = None) -> str:
    """Format ``date`` (default: now) as a sortable timestamp string."""
    return (date or tnow()).strftime(_TS_LAYOUT)


def parse_delay(value: str | int | float | datetime.timedelta) -> float:
    """Seconds from a relative date string, a number of seconds or a timedelta.

    Raises ValueError naming the accepted forms when ``value`` is malformed.
    """
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"invalid time {value!r}: expected a relative time such as {RELATIVE_FORMS}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"invalid time {value!r}: a delay cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _RELATIVE.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(
        f"invalid time {value!r}: expected a relative time such as {RELATIVE_FORMS}, "
        f"or a number of seconds"
    )


def stabsformat(sdate: str | int | float | datetime.datetime | datetime.timedelta,
                dbase: datetime.datetime | None = None) -> datetime.datetime:
    """The absolute date a date string stands for.

    Relative forms count from ``dbase`` (default: now). An absolute
    :func:`tsformat` string or a ``datetime`` is returned as a datetime.
    """
    if isinstance(sdate, datetime.datetime):
        return sdate
    if isinstance(sdate, str) and sdate.strip().isdigit() and len(sdate.strip()) >= 14:
        text = sdate.strip()
        try:
            return datetime.datetime.strptime(text.ljust(20, "0"), _TS_LAYOUT)
        except ValueError:
            raise ValueError(
                f"invalid date {sdate!r}: an absolute date has the layout YYYYmmddHHMMSS[ffffff]"
            ) from None
    seconds = parse_delay(sdate)
    return (dbase or tnow()) + datetime.timedelta(seconds=seconds)

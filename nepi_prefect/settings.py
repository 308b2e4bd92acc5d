"""Every environment variable nepi-prefect reads, and its default, in one place.

Values are read when asked for, not at import, so a test or a script may set a
variable after importing the package. This module imports nothing of the
project: every layer may use it.
"""

from __future__ import annotations

import os
import socket

#: where collected traces, ``summary.json`` and campaign tables go
RESULTS_ENV = "NEPI_PREFECT_RESULTS"
DEFAULT_RESULTS = "~/.nepi-prefect/experiments"

#: dispatcher worker threads per experiment
NTHREADS_ENV = "NEPI_NTHREADS"
DEFAULT_NTHREADS = 50

#: the engine's default recorder: "prefect", "none" or "module:Class"
RECORDER_ENV = "NEPI_PREFECT_RECORDER"
DEFAULT_RECORDER = "prefect"

#: seconds a recorder's close() may wait for the record to be handed over
RECORD_TIMEOUT_ENV = "NEPI_PREFECT_RECORD_TIMEOUT"
DEFAULT_RECORD_TIMEOUT = 120.0


def results_root(override: str | None = None) -> str:
    """The absolute results root: ``override``, else ``$NEPI_PREFECT_RESULTS``, else the default."""
    return os.path.abspath(os.path.expanduser(
        override or os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS))


def nthreads(override: int | None = None) -> int:
    """Dispatcher worker threads: ``override``, else ``$NEPI_NTHREADS``, else 50."""
    if override:
        return int(override)
    text = os.environ.get(NTHREADS_ENV, "").strip()
    if not text:
        return DEFAULT_NTHREADS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{NTHREADS_ENV}={text!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{NTHREADS_ENV}={text!r}: expected a positive integer")
    return value


def recorder_choice() -> str:
    """The configured default recorder, as written in ``$NEPI_PREFECT_RECORDER``."""
    return os.environ.get(RECORDER_ENV, DEFAULT_RECORDER).strip() or DEFAULT_RECORDER


def record_timeout(override: float | None = None) -> float:
    """Seconds a recorder's close() may wait: ``override``, else the variable, else 120."""
    if override is not None:
        return float(override)
    text = os.environ.get(RECORD_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else DEFAULT_RECORD_TIMEOUT
    except ValueError:
        raise ValueError(f"{RECORD_TIMEOUT_ENV}={text!r}: expected a number of seconds") from None

#: where emulated-network runs (netns) keep the record of what they created, so a
#: later run or ``nepi-prefect cleanup --netns`` can remove what a killed one left
NETNS_STATE_ENV = "NEPI_PREFECT_NETNS_STATE"
DEFAULT_NETNS_STATE = "/run/nepi-prefect/netns"


def netns_state_dir() -> str:
    """The netns state directory: ``$NEPI_PREFECT_NETNS_STATE``, else /run/nepi-prefect/netns."""
    return os.environ.get(NETNS_STATE_ENV, "").strip() or DEFAULT_NETNS_STATE


#: seconds without a heartbeat after which a campaign point in progress counts as lost
CAMPAIGN_LEASE_ENV = "NEPI_PREFECT_CAMPAIGN_LEASE"
DEFAULT_CAMPAIGN_LEASE = 30.0

#: how a worker names itself in a campaign table's ``worker`` column (default: the host name)
WORKER_LABEL_ENV = "NEPI_PREFECT_WORKER_LABEL"


def campaign_lease(override: float | None = None) -> float:
    """Seconds before a silent point in progress is reclaimed: ``override``, else the variable, else 30."""
    if override is not None:
        return float(override)
    text = os.environ.get(CAMPAIGN_LEASE_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_CAMPAIGN_LEASE
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{CAMPAIGN_LEASE_ENV}={text!r}: expected a positive number of seconds")
    return value


def worker_label() -> str:
    """What a campaign row records as the worker that ran it."""
    return os.environ.get(WORKER_LABEL_ENV, "").strip() or socket.gethostname()

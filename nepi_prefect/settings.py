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

#: seconds a recorder's close() may wait for the server to accept the record once it is
#: journaled (what is not accepted by then stays in the journal and is shipped later)
RECORD_TIMEOUT_ENV = "NEPI_PREFECT_RECORD_TIMEOUT"
DEFAULT_RECORD_TIMEOUT = 2.0

#: seconds a node whose connection broke is given to take a new one before it, and
#: every RM on it, FAILS (each attempt may also take the node's connectTimeout)
NODE_LOST_AFTER_ENV = "NEPI_PREFECT_NODE_LOST_AFTER"
DEFAULT_NODE_LOST_AFTER = 30.0


def node_lost_after() -> float:
    """``$NEPI_PREFECT_NODE_LOST_AFTER`` seconds, else 30."""
    return _seconds(NODE_LOST_AFTER_ENV, DEFAULT_NODE_LOST_AFTER)


#: where each run notes what it started on its Linux hosts until it cleaned them, so
#: the next run on a host kills what a lost (or, with cleanProcesses, crashed) run left
LOST_RUNS_ENV = "NEPI_PREFECT_LOST_RUNS"
DEFAULT_LOST_RUNS = "~/.nepi-prefect/host-runs"


def lost_runs_dir() -> str:
    """``$NEPI_PREFECT_LOST_RUNS``, else ~/.nepi-prefect/host-runs."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get(LOST_RUNS_ENV, "").strip() or DEFAULT_LOST_RUNS))


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
    """Seconds a recorder's close() may wait: ``override``, else the variable, else 2."""
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


#: where emulated (netns) hosts keep their files (homes, sshd keys and configuration)
NETNS_HOMES_ENV = "NEPI_PREFECT_NETNS_HOMES"
DEFAULT_NETNS_HOMES = "/tmp/nepi-prefect-netns"


def netns_homes_dir() -> str:
    """Where netns hosts' files go: ``$NEPI_PREFECT_NETNS_HOMES``, else /tmp/nepi-prefect-netns."""
    return os.environ.get(NETNS_HOMES_ENV, "").strip() or DEFAULT_NETNS_HOMES


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


# -- the Prefect record (nepi_prefect.orchestration) ----------------------------------------------
#: Prefect's own: the API the record goes to; unset means nepi-prefect's local server
PREFECT_API_URL_ENV = "PREFECT_API_URL"
#: Prefect's own: its home directory (database, our server state and journal live there)
PREFECT_HOME_ENV = "PREFECT_HOME"
DEFAULT_PREFECT_HOME = "~/.prefect"

#: the loopback port of the local Prefect server nepi-prefect starts
SERVER_PORT_ENV = "NEPI_PREFECT_SERVER_PORT"
DEFAULT_SERVER_PORT = 4200

#: seconds to wait for the local server to answer after starting it (it never aborts
#: an experiment: the record waits in the journal meanwhile)
SERVER_START_TIMEOUT_ENV = "NEPI_PREFECT_SERVER_START_TIMEOUT"
DEFAULT_SERVER_START_TIMEOUT = 300.0

#: where records wait until the server has them (default: $PREFECT_HOME/nepi-journal)
JOURNAL_ENV = "NEPI_PREFECT_JOURNAL"

#: where a migrated, empty Prefect database is kept to start fresh PREFECT_HOMEs from
#: ("0": none; every fresh home's server migrates its database from nothing)
DB_TEMPLATE_DIR_ENV = "NEPI_PREFECT_DB_TEMPLATE_DIR"
DEFAULT_DB_TEMPLATE_DIR = "~/.cache/nepi-prefect"


def prefect_api_url() -> str | None:
    """``$PREFECT_API_URL``, or None: the record goes to the local server."""
    return os.environ.get(PREFECT_API_URL_ENV, "").strip() or None


def prefect_home() -> str:
    """Prefect's home directory, as Prefect resolves it from ``$PREFECT_HOME``."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get(PREFECT_HOME_ENV, "").strip() or DEFAULT_PREFECT_HOME))


def server_port() -> int:
    """The local server's port: ``$NEPI_PREFECT_SERVER_PORT``, else 4200."""
    text = os.environ.get(SERVER_PORT_ENV, "").strip()
    if not text:
        return DEFAULT_SERVER_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{SERVER_PORT_ENV}={text!r}: expected a TCP port, 1..65535")
    return int(text)


def server_start_timeout() -> float:
    """Seconds to wait for a starting local server to answer."""
    return _seconds(SERVER_START_TIMEOUT_ENV, DEFAULT_SERVER_START_TIMEOUT)


def db_template_dir() -> str | None:
    """Where the template database lives, or None when templates are turned off."""
    text = os.environ.get(DB_TEMPLATE_DIR_ENV, "").strip() or DEFAULT_DB_TEMPLATE_DIR
    return None if text == "0" else os.path.abspath(os.path.expanduser(text))


def journal_dir() -> str:
    """Where undelivered records are kept: ``$NEPI_PREFECT_JOURNAL`` or under PREFECT_HOME."""
    text = os.environ.get(JOURNAL_ENV, "").strip()
    return os.path.abspath(os.path.expanduser(text)) if text else \
        os.path.join(prefect_home(), "nepi-journal")


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def export_prefect_api_url(url: str) -> None:
    """Point this process's Prefect code (and its children) at ``url``."""
    os.environ[PREFECT_API_URL_ENV] = url


def prefect_ui_url() -> str | None:
    """Prefect's own ``$PREFECT_UI_URL``, if set."""
    return os.environ.get("PREFECT_UI_URL", "").strip() or None


def prefect_credentials() -> tuple[str | None, str | None]:
    """Prefect's own ``$PREFECT_API_KEY`` and ``$PREFECT_API_AUTH_STRING``."""
    return (os.environ.get("PREFECT_API_KEY") or None,
            os.environ.get("PREFECT_API_AUTH_STRING") or None)


#: where the extracted ns-3 TypeId registry is cached (one JSON file per ns3 version)
NS3_CACHE_ENV = "NEPI_PREFECT_NS3_CACHE"
DEFAULT_NS3_CACHE = "~/.cache/nepi-prefect"

#: the Python that runs the ns-3 simulator process (default: this interpreter)
NS3_PYTHON_ENV = "NEPI_PREFECT_NS3_PYTHON"

#: "0": no simulator process is kept for the next run (neither a pre-imported spare
#: nor the process of a run that ended cleanly); each run imports ns-3 afresh
NS3_SPARE_ENV = "NEPI_PREFECT_NS3_SPARE"


def ns3_cache_dir() -> str:
    """The directory of the cached ns-3 registry."""
    return os.path.abspath(os.path.expanduser(os.environ.get(NS3_CACHE_ENV) or DEFAULT_NS3_CACHE))


def ns3_python() -> str:
    """The interpreter for the ns-3 simulator process."""
    import sys
    return os.environ.get(NS3_PYTHON_ENV, "").strip() or sys.executable


def ns3_spare() -> bool:
    """Whether a pre-imported simulator process is kept ready for the next run."""
    return os.environ.get(NS3_SPARE_ENV, "1").strip() not in ("0", "false", "no")


#: which ``nepi.resource.<state>`` and ``nepi.metric`` events the Prefect record carries
#: (for automations): "all" (every life-cycle state and the metrics), "failures" (only
#: nepi.resource.failed and the metrics: fewer events for the server to ingest, which
#: shows on runs of a thousand RMs) or "none" (also 0)
RESOURCE_EVENTS_ENV = "NEPI_PREFECT_RESOURCE_EVENTS"
RESOURCE_EVENTS_CHOICES = ("all", "failures", "none")


def resource_events() -> str:
    """``$NEPI_PREFECT_RESOURCE_EVENTS``: all (the default, also 1), failures or none (0)."""
    text = os.environ.get(RESOURCE_EVENTS_ENV, "all").strip().lower() or "all"
    text = {"1": "all", "0": "none", "on": "all", "off": "none"}.get(text, text)
    if text not in RESOURCE_EVENTS_CHOICES:
        raise ValueError(f"{RESOURCE_EVENTS_ENV}={text!r}: expected one of "
                         f"{', '.join(RESOURCE_EVENTS_CHOICES)}")
    return text

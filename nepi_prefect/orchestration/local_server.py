"""nepi-prefect's local Prefect server: one per PREFECT_HOME, started on demand.

With no ``PREFECT_API_URL``, the first experiment (or ``nepi-prefect server
start``) starts the service (:mod:`.service`: ``prefect server start`` on loopback
and a shipper of left-behind journals) detached: its own session, its output in
``$PREFECT_HOME/nepi-server.log``. Later runs reuse it. It runs until
``nepi-prefect server stop``.

Starting is serialised by an exclusive lock on ``$PREFECT_HOME/nepi-server.lock``:
the process holding it checks the state file (``nepi-server.json``: pid, port),
reuses a live server or starts one and waits until ``/api/health`` answers;
the others wait for the lock and find it running. So concurrent first runs
share one server and one database migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from nepi_prefect import settings
from nepi_prefect.util.procs import pid_gone

log = logging.getLogger("nepi_prefect.orchestration")

SERVICE = "nepi_prefect.orchestration.service"
#: ``prefect`` with garbage collection off the event loop (:mod:`.server_main` says why)
PREFECT_SERVER = (sys.executable, "-m", "nepi_prefect.orchestration.server_main")
STATE_FILE = "nepi-server.json"
LOCK_FILE = "nepi-server.lock"
LOG_FILE = "nepi-server.log"
DRAIN_QUIET = 2.0   # seconds without a new write before the server counts as drained
DRAIN_CAP = 60.0    # longest wait for that before a stop

#: the server settings this project needs (the caller's environment may override them)
SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # An experiment records thousands of task runs in seconds: write them in batches.
    # The interval is whole seconds: Prefect truncates it to an int, and 0 made the
    # recorder's flush loop spin (half a core while idle, and no batching at all).
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # The event feed too (one SQLite transaction per batch: fewer, larger ones).
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}


class ServerError(RuntimeError):
    """The local server could not be started (the message says why and where its log is)."""


@dataclass
class ServerState:
    """What ``nepi-server.json`` holds about the running server."""

    pid: int
    port: int
    started: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def home() -> Path:
    path = Path(settings.prefect_home())
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path() -> Path:
    return home() / LOG_FILE


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(home() / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_state() -> ServerState | None:
    try:
        data = json.loads((home() / STATE_FILE).read_text())
        return ServerState(int(data["pid"]), int(data["port"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(state: ServerState) -> None:
    tmp = home() / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, home() / STATE_FILE)


def _alive(pid: int) -> bool:
    """``pid`` is a live (not zombie) service process (see :mod:`.service`)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return SERVICE.encode() in cmdline and status.rsplit(")", 1)[-1].split()[0] != "Z"


def healthy(api_url: str, timeout: float = 5.0) -> bool:
    """``/api/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds (uvicorn sets SO_REUSEADDR): the closed connections of a
        # server just stopped (TIME_WAIT) must not move its successor to another port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running() -> ServerState | None:
    """The local server of this PREFECT_HOME if its process lives (it may still be starting)."""
    state = _read_state()
    return state if state is not None and _alive(state.pid) else None


def ensure(timeout: float | None = None) -> ServerState:
    """The running local server, started if needed; returns once it answers."""
    timeout = settings.server_start_timeout() if timeout is None else timeout
    with _locked():
        state = running()
        if state is None:
            _clean_up_after_a_dead_service()
            state = _start()
            _wait_healthy(state, timeout)
            _warm_up(state)
        else:
            _wait_healthy(state, timeout)
        return state


def _clean_up_after_a_dead_service() -> None:
    """A service killed alone may leave its server child behind, in its process group,
    holding the port: end that group before starting anew."""
    state = _read_state()
    if state is None:
        return
    _signal(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not _port_free(state.port) and time.monotonic() < deadline:
        time.sleep(0.2)


def _start() -> ServerState:
    port = settings.server_port()
    if not _port_free(port):
        fallback = _free_port()
        log.info("port %d is taken; the local Prefect server uses port %d", port, fallback)
        port = fallback
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != settings.PREFECT_API_URL_ENV}
    env.update({k: env.get(k, v) for k, v in SERVER_ENV.items()})
    env.update(PREFECT_HOME=str(home()), PREFECT_UI_API_URL=api_url)
    with open(log_path(), "ab") as out:
        # The service runs `prefect server start` and ships left-behind journals.
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVICE, "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,   # a service: not in the caller's terminal job or pipes
            close_fds=True)
    proc.returncode = 0   # never reaped by us: it outlives this process on purpose
    state = ServerState(proc.pid, port, time.time())
    _write_state(state)
    return state


def _wait_healthy(state: ServerState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while not healthy(state.api_url):
        # gone or a zombie (not "not _alive": a child just forked has its parent's cmdline)
        if pid_gone(state.pid):
            raise ServerError(f"the local Prefect server exited while starting; see {log_path()}")
        if time.monotonic() >= deadline:
            raise ServerError(f"the local Prefect server on port {state.port} did not answer "
                              f"within {timeout:.0f} s; see {log_path()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _warm_up(state: ServerState) -> None:
    """One real request before anyone else's: the server builds its routes on the
    first one (seconds of CPU), better once, alone, than under eight clients."""
    request = urllib.request.Request(f"{state.api_url}/flows/filter", data=b'{"limit": 1}',
                                     headers={"content-type": "application/json"})
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=60).close()


def stop(timeout: float = 30.0) -> ServerState | None:
    """Stop the local server (SIGTERM to its session, SIGKILL after ``timeout``), once it
    has written what it was sent (see :func:`_drain`)."""
    with _locked():
        state = running()
        if state is not None:
            _drain(state.port)
            _signal(state.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(state.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(state.pid):
                _signal(state.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (home() / STATE_FILE).unlink()
        return state


def _drain(port: int, quiet: float = DRAIN_QUIET, cap: float = DRAIN_CAP) -> None:
    """Wait until the server's event and task-run counts have not moved for ``quiet``
    seconds (at most ``cap``). The server queues what it is sent in memory and writes
    it in batches, the event feed well after the task runs: stopping it at once, right
    after a large record, dropped thousands of events that were still queued."""
    deadline, last, since = time.monotonic() + cap, None, time.monotonic()
    while time.monotonic() < deadline:
        counts = _written(port)
        if counts is None:
            return   # not answering: nothing to wait for
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


def _written(port: int) -> tuple[int, int] | None:
    """(events of the last day, task runs) on the server; None if it does not answer."""
    day_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    try:
        events = _post(port, "events/count-by/event",
                       {"filter": {"occurred": {"since": day_ago}}, "time_unit": "hour"})
        return sum(item["count"] for item in events), int(_post(port, "task_runs/count", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _post(port: int, path: str, body: dict) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)   # the server leads its own session

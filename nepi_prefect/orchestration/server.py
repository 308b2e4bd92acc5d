"""Which Prefect API the recorder talks to, and the embedded (ephemeral) one.

With ``PREFECT_API_URL`` set, that server is used. Without it, the recorder
starts Prefect's ephemeral API (a uvicorn subprocess over SQLite under
PREFECT_HOME), as Prefect itself does, with two differences:

* the subprocess gets its own session, so a Ctrl-C in the terminal reaches the
  script (which then records the interruption) and not the API server first;
* it is stopped by our own exit hook, *after* abandoned experiments have been
  closed, so that their record can still reach it.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger("nepi_prefect.orchestration")

_lock = threading.Lock()
_EMBEDDED_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "0.25",
}
_ephemeral: Any = None   # the SubprocessASGIServer we started or adopted


def configured_api_url() -> str | None:
    """The API URL from Prefect's settings, or None for the ephemeral API."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def ephemeral_api_url() -> str:
    """Start (once per process) the ephemeral Prefect API and return its URL."""
    global _ephemeral
    with _lock:
        server = _server_class()()
        if not server.running:
            quiet = logging.getLogger("prefect.server.api.server")
            level = quiet.level
            quiet.setLevel(logging.WARNING)  # "Starting temporary server..." is noise here
            try:
                server.start()
            finally:
                quiet.setLevel(level)
        # Prefect stops it at exit, possibly before we closed abandoned runs: we do it.
        atexit.unregister(server.stop)
        _ephemeral = server
        return server.api_url


@functools.cache
def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class _DetachedASGIServer(SubprocessASGIServer):
        """Prefect's ephemeral server, in its own session (immune to the terminal's Ctrl-C)."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            from prefect.settings import get_current_settings

            import prefect
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            # Write task runs in batches rather than one by one (the default): an
            # experiment records thousands of them in seconds.
            for key, value in _EMBEDDED_TUNING.items():
                env.setdefault(key, value)
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                 "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=env, start_new_session=True, stdin=subprocess.DEVNULL,
            )

    # SubprocessASGIServer is a per-port singleton: if Prefect already started
    # one (a user's @flow), that instance is returned and reused.
    return _DetachedASGIServer


def stop_ephemeral() -> None:
    """Stop the ephemeral API if this process runs one."""
    global _ephemeral
    with _lock:
        server, _ephemeral = _ephemeral, None
    if server is not None:
        server.stop()


def _at_exit() -> None:
    # Close experiments left without shutdown() while the API is still up,
    # whatever order the atexit hooks were registered in; then stop the API.
    try:
        from nepi_prefect.execution.exitguard import close_abandoned

        close_abandoned()
    finally:
        stop_ephemeral()


# Registered at import, i.e. before any EC registers its own exit guard, so it
# runs after that guard (atexit is LIFO).
atexit.register(_at_exit)

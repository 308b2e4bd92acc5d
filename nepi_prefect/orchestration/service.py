"""The local server's service process: ``prefect server start`` and a journal shipper.

``python -m nepi_prefect.orchestration.service --port P`` runs the Prefect
server as its child (same session, same log) and, every few seconds, ships the
journals that experiments left behind for it (a process that exited before the
server took its whole record, or was killed). So a record reaches the server
soon after its process ended, even if no other nepi-prefect process runs.
SIGTERM (``nepi-prefect server stop`` signals the whole session) stops both.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nepi_prefect.orchestration import local_server, replay

log = logging.getLogger("nepi_prefect.orchestration")

SHIP_EVERY = 2.0   # seconds between looks at the journal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = subprocess.Popen(
        [*_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(args.port)],
        stdin=subprocess.DEVNULL)
    api_url = f"http://127.0.0.1:{args.port}/api"
    while not stop.wait(SHIP_EVERY) and server.poll() is None:
        if local_server.healthy(api_url):
            try:
                replay.flush(only_for=api_url)
            except Exception:
                log.warning("shipping journals failed", exc_info=True)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


def _prefect_cli() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


if __name__ == "__main__":
    sys.exit(main())

"""The local server's service process: ``prefect server start`` and a journal shipper.

``python -m nepi_prefect.orchestration.service --port P`` runs the Prefect
server as its child (same session, same log) and, every few seconds, ships the
journals that experiments left behind for it (a process that exited before the
server took its whole record, or was killed). So a record reaches the server
soon after its process ended, even if no other nepi-prefect process runs.
A fresh PREFECT_HOME starts from the template database, and the first server
without one makes it (:mod:`.dbtemplate`).
SIGTERM (``nepi-prefect server stop`` signals the whole session) stops them all.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading

from nepi_prefect.orchestration import dbtemplate, local_server, replay
from nepi_prefect.orchestration import journal as journals

log = logging.getLogger("nepi_prefect.orchestration")

#: seconds between looks at the journal: a run that exits before the server took its
#: whole record leaves the rest there, and the sooner it goes on, the sooner it is seen
LOOK_EVERY = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    home, cli = local_server.home(), dbtemplate.prefect_cli()
    dbtemplate.seed(home, dict(os.environ))
    server = subprocess.Popen(
        [*local_server.PREFECT_SERVER, "server", "start", "--host", "127.0.0.1",
         "--port", str(args.port)],
        stdin=subprocess.DEVNULL)
    api_url = f"http://127.0.0.1:{args.port}/api"
    maker, made = None, False
    while not stop.wait(LOOK_EVERY) and server.poll() is None:
        if maker is not None and maker.poll():
            maker = None
        if made and not journals.pending():
            continue   # nothing to ship: not even a request to the server
        if not local_server.healthy(api_url):
            continue
        if not made:   # after the server is up, so it never slows the first start
            maker, made = dbtemplate.start_making(cli, dict(os.environ)), True
        try:
            replay.flush(only_for=api_url)
        except Exception:
            log.warning("shipping journals failed", exc_info=True)
    if maker is not None:
        maker.stop()
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cancel from Prefect: a flow run cancelled in the UI (or with ``prefect flow-run
cancel``) aborts its experiment.

The record's flow run is made by the recorder, not by Prefect's engine, so nothing
of Prefect's would notice the cancellation in this process. A daemon thread looks
at the flow run's state every ``CANCEL_POLL`` seconds while the experiment runs;
when it is Cancelling or Cancelled, it calls ``on_cancel``: the experiment is
aborted (pending actions cancelled, every resource released, remote processes
killed, traces collected so far kept) and its flow run ends Cancelled.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("nepi_prefect.orchestration")

CANCEL_POLL = 2.0   # seconds between looks at the flow run's state
CANCEL_STATES = ("CANCELLING", "CANCELLED")


class CancelWatch:
    """Watch one flow run; call ``on_cancel(message)`` once if it is cancelled (the
    state's message, "" if it has none).

    :param flow_run: returns ``(api, flow_run_id)`` once the record has its flow run,
        ``(None, None)`` before
    """

    def __init__(self, flow_run: Callable[[], tuple[Any, Any]],
                 on_cancel: Callable[[str], None], poll: float = CANCEL_POLL):
        self._flow_run = flow_run
        self._on_cancel = on_cancel
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="nepi-prefect-cancel-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll):
            api, flow_run_id = self._flow_run()
            if api is None or flow_run_id is None:
                continue
            try:
                state, message = api.flow_run_state(flow_run_id)
            except Exception as exc:   # a busy or absent server: look again later
                log.debug("cancel watch: %s", exc)
                continue
            if state in CANCEL_STATES and not self._stop.is_set():
                self._stop.set()
                self._on_cancel(message or "")
                return

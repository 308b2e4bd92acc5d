"""The failure policy: what an RM's failure means for the experiment.

An RM that raised is FAILED (its ``failure`` is the exception's last line). An
RM that reaches FAILED, by an exception or by its own verdict, is then:

* critical (the default): the experiment becomes FAILED, every waiting action
  is cancelled, every RM is released and every ``wait*()`` returns;
* not critical: a warning, and the experiment goes on.
"""

from __future__ import annotations

import threading
import traceback
from typing import Callable

from nepi_prefect.execution.errors import ExperimentStateError
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.states import ECState, ECState2str, ResourceState

S = ResourceState


class ExperimentStatus:
    """RUNNING, FAILED (and why) or TERMINATED."""

    def __init__(self) -> None:
        self.state = ECState.RUNNING
        self.failure: str | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.state == ECState.RUNNING

    def fail(self, reason: str) -> bool:
        """Become FAILED for ``reason``; False if the experiment no longer ran."""
        with self._lock:
            if self.state != ECState.RUNNING:
                return False
            self.state, self.failure = ECState.FAILED, reason
            return True

    def terminate(self) -> None:
        with self._lock:
            self.state = ECState.TERMINATED

    def require_running(self, what: str) -> None:
        """Raise a clear error unless the experiment still runs."""
        if self.state != ECState.RUNNING:
            raise ExperimentStateError(
                f"cannot {what}: the experiment is {ECState2str[self.state]}"
                + (f" ({self.failure})" if self.failure else ""))


class FailurePolicy:
    """Turns RM exceptions and failures into RM and experiment states.

    :param on_abort: called once when the experiment fails, with the reason
        (cancel waiting actions, wake waiters, release every RM)
    :param redact: masks secrets in text that reaches logs
    """

    def __init__(self, status: ExperimentStatus, on_abort: Callable[[str], None],
                 redact: Callable[[str], str]):
        self._status = status
        self._on_abort = on_abort
        self._redact = redact

    def rm_raised(self, rm: ResourceManager, tb: str) -> None:
        """An action or task of ``rm`` raised (``tb`` is the traceback): fail ``rm``."""
        rm.error(f"failed:\n{tb}")
        if rm.recorded_state in (S.FAILED, S.RELEASED):
            return
        if not rm.failure:  # the exception's own line: "TransportError: ... exit code 8: ..."
            rm.failure = self._redact(tb.strip().splitlines()[-1])
        try:
            rm.fail()
        except Exception:
            rm.error(f"fail() raised too:\n{traceback.format_exc()}")
        if rm.recorded_state not in (S.FAILED, S.RELEASED):
            rm.set_failed()

    @staticmethod
    def fail_rm(rm: ResourceManager) -> None:
        """Fail ``rm`` by its own ``fail()`` (a condition of it can never hold)."""
        if rm.recorded_state not in (S.FAILED, S.RELEASED):
            rm.fail()

    def rm_failed(self, rm: ResourceManager) -> None:
        """``rm`` reached FAILED: abort the experiment if ``rm`` is critical."""
        if not self._status.running:
            return
        try:
            critical = rm.get("critical")
        except Exception:
            critical = True
        if critical:
            # the RM's own reason too, so the experiment's failure says what happened
            why = f": {rm.failure}" if rm.failure else ""
            self.abort(f"critical resource {rm.get_rtype()} {rm.guid} FAILED{why}")
        else:
            rm.warning("FAILED; it is not critical, the experiment goes on")

    def abort(self, reason: str) -> None:
        """Fail the experiment for ``reason`` (once; later calls do nothing)."""
        if self._status.fail(reason):
            self._on_abort(reason)

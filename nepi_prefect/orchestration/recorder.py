"""The Prefect bridge: an experiment run is a flow run, an RM action a task run.

``PrefectRecorder`` is the engine's default :class:`Recorder`. Its methods are
called from the EC and its dispatcher threads; they only snapshot what they are
told and queue it. A background thread (:mod:`.pipeline`) does all the talking
to the Prefect API. Only :meth:`PrefectRecorder.close` waits, until the record
is confirmed on the server (or a bounded timeout ran out).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from nepi_prefect import settings
from nepi_prefect.execution.recording import ActionRun, Recorder
from nepi_prefect.orchestration import logins  # noqa: F401  (lends the saved-login loaders)
from nepi_prefect.orchestration import server  # noqa: F401  (installs the exit hook early)
from nepi_prefect.orchestration.artifacts import summary_artifact
from nepi_prefect.orchestration.events import Snapshot
from nepi_prefect.orchestration.pipeline import Closing, Outcome, Shipper, Target

if TYPE_CHECKING:
    from nepi_prefect.execution.ec import ExperimentController

log = logging.getLogger("nepi_prefect.orchestration")

ATTACH_MODES = ("auto", "current", "subflow", "new")
ABANDON_TIMEOUT = 30.0


class PrefectRecorder(Recorder):
    """Record one experiment run (one EC) as one Prefect flow run.

    :param attach: "auto" (a subflow run inside a user's ``@flow``, else a new
        flow run), "current" (task runs go into the current flow run, which
        keeps control of its final state), "subflow" (require a current flow)
        or "new" (always a top-level flow run)
    :param timeout: seconds :meth:`close` waits for the record to be confirmed
        (default ``$NEPI_PREFECT_RECORD_TIMEOUT`` or 120)
    """

    def __init__(self, attach: str = "auto", timeout: float | None = None):
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach must be one of {ATTACH_MODES}, got {attach!r}")
        self.attach = attach
        self.timeout = settings.record_timeout(timeout)
        self._shipper: Shipper | None = None
        self._abandoned: tuple[str, str] | None = None   # (final type, message)
        self._closed = False
        self._redact = _same

    # -- the Recorder interface ----------------------------------------------------------
    def open(self, ec: "ExperimentController") -> None:
        # Imported here, in the main thread, because they register atexit hooks on import:
        # if the background thread imported it during interpreter exit (a Ctrl-C while
        # Prefect is still loading), the import would fail and the record with it.
        import concurrent.futures.process  # noqa: F401
        import concurrent.futures.thread  # noqa: F401

        self._redact = ec.redact
        target = self._target(ec)
        self._shipper = Shipper(target)
        self._shipper.start()

    def action_changed(self, run: ActionRun) -> None:
        # Called from dispatcher threads: snapshot (the engine mutates the run) and queue.
        if self._shipper is not None:
            snap = Snapshot.of(run)
            if snap.message:  # rare: failures; keep secrets out of state messages
                snap = dataclasses.replace(snap, message=self._redact(snap.message))
            self._shipper.queue.put(("run", snap))

    def log(self, run: ActionRun | None, level: int, message: str) -> None:
        if self._shipper is not None:
            logger = f"nepi.{run.rtype}" if run is not None else "nepi.ec"
            self._shipper.queue.put(("log", run.id if run is not None else None, logger,
                                     level, message, datetime.now(timezone.utc)))

    def abandon(self, ec: "ExperimentController", reason: str) -> None:
        self.timeout = min(self.timeout, ABANDON_TIMEOUT)  # the process is on its way out
        if _interrupted():
            self._abandoned = ("CANCELLED", f"interrupted (Ctrl-C): {reason}")
        else:
            self._abandoned = ("CRASHED", reason)

    def close(self, ec: "ExperimentController", summary: dict[str, Any]) -> None:
        if self._shipper is None or self._closed:
            return
        self._closed = True
        final_type, message = self._final(summary)
        message = self._redact(message)
        artifact = summary_artifact(summary, redact=self._redact)
        self._shipper.queue.put(("close", Closing(artifact, final_type, message, self.timeout)))
        if not self._shipper.done.wait(self.timeout + 10):
            log.warning("the Prefect record of experiment %s is incomplete: the recorder "
                        "did not finish within %.0f s", summary.get("exp_id"), self.timeout)
            return
        self._report(summary)

    # -- what the record achieved ----------------------------------------------------------
    @property
    def outcome(self) -> Outcome | None:
        """The flow run id, API URL, confirmation and timings (complete after close)."""
        return self._shipper.outcome if self._shipper is not None else None

    @property
    def flow_run_id(self) -> Any:
        return self._shipper.outcome.flow_run_id if self._shipper is not None else None

    # -- helpers ---------------------------------------------------------------------------------
    def _target(self, ec: "ExperimentController") -> Target:
        name = f"{ec.exp_id}-{ec.run_id}"
        target = Target(attach="new", flow_run_name=name, tags=[ec.exp_id, "nepi-prefect"],
                        parameters={"exp_id": ec.exp_id, "run_id": ec.run_id})
        # Importing Prefect takes a second or two: don't, unless the user already did
        # (then there may be a flow run context, or temporary settings, to honour).
        if "prefect.context" not in sys.modules:
            if self.attach in ("current", "subflow"):
                raise RuntimeError(f"attach={self.attach!r} needs a running Prefect flow")
            return target
        from prefect.context import FlowRunContext
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        target.api_url = settings.api.url
        target.api_key = settings.api.key.get_secret_value() if settings.api.key else None
        target.auth_string = (settings.api.auth_string.get_secret_value()
                              if settings.api.auth_string else None)
        ctx = FlowRunContext.get()
        flow_run = getattr(ctx, "flow_run", None)
        if flow_run is None:
            if self.attach in ("current", "subflow"):
                raise RuntimeError(f"attach={self.attach!r} needs a running Prefect flow")
            return target
        if self.attach in ("auto", "subflow", "current"):
            target.attach = "current" if self.attach == "current" else "subflow"
            target.parent_flow_run_id, target.parent_flow_id = flow_run.id, flow_run.flow_id
        return target

    def _final(self, summary: dict[str, Any]) -> tuple[str, str]:
        if self._abandoned is not None:
            return self._abandoned
        if summary.get("state") == "FAILED":
            return "FAILED", f"experiment failed: {summary.get('failure') or 'unknown reason'}"
        return "COMPLETED", f"{len(summary.get('resources', []))} resources"

    def _report(self, summary: dict[str, Any]) -> None:
        outcome = self._shipper.outcome
        for error in outcome.errors:
            log.warning("Prefect record of experiment %s: %s", summary.get("exp_id"), error)
        if not outcome.confirmed:
            log.warning("the Prefect record of experiment %s is incomplete: %d task runs "
                        "not confirmed on %s within %.0f s", summary.get("exp_id"),
                        outcome.missing, outcome.api_url, self.timeout)


def _interrupted() -> bool:
    """True when the interpreter is exiting because of an unhandled Ctrl-C."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _same(text: str) -> str:
    return text

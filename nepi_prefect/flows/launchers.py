"""How a campaign's runs are started: as child flow runs in threads of this process
(:class:`LocalLauncher`), or as flow runs of the experiment deployment on a work pool
that any of its workers takes (:class:`PoolLauncher`).

Either way the experiment flow writes its own outcome into the campaign store; the
launcher records a failure only when the flow could not (it never started, crashed,
or its worker died).
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelled, Crashed
from prefect.utilities.callables import parameter_schema

from nepi_prefect import settings
from nepi_prefect.flows._common import run_name
from nepi_prefect.results.store import FAILED, RUNNING, CampaignStore, owner_dead

#: how often a launch that hit a transient API error is tried, and the first back-off
ATTEMPTS, BACKOFF = 4, 1.0
#: how often a run lost with its worker is dispatched again before it counts as failed
MAX_DISPATCHES = 3
#: leases a flow run may stay PENDING (its worker starting the process) before it counts as lost
PENDING_LEASES = 4
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def transient(exc: BaseException) -> bool:
    """An API hiccup worth retrying: refused or dropped connections, 5xx, 429, 408."""
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return True
    if isinstance(exc, (PrefectHTTPStatusError, httpx.HTTPStatusError)):
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    return False


def with_retries(call: Callable[[], Any], attempts: int = ATTEMPTS, backoff: float = BACKOFF) -> Any:
    """``call()``, retried with exponential back-off while it fails transiently."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")


# -- in this process -------------------------------------------------------------------------------
class LocalLauncher:
    """Each run is a child flow run of the current flow, in a thread of its own.

    ``run_point(run, params)`` runs one (the experiment flow, which records its outcome);
    anything it raises becomes a failed row. Stopping lets the running points end.
    """

    def __init__(self, store: CampaignStore, run_point: Callable[[dict, dict], Any], concurrency: int):
        self.store = store
        self.run_point = run_point
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="nepi-campaign")
        self.futures: dict[str, Future] = {}

    def start(self, run: dict[str, Any], params: dict[str, Any]) -> None:
        # Each child flow must see the current flow run as its parent: copy the context.
        ctx = contextvars.copy_context()
        self.futures[run["key"]] = self.pool.submit(ctx.run, self._one, run, params)

    def _one(self, run: dict[str, Any], params: dict[str, Any]) -> None:
        # Not retried here: the experiment would run twice. Its recorder ships the record
        # through a journal, so API errors do not reach this point.
        try:
            self.run_point(run, params)
        except BaseException as exc:
            self.store.finish(run["key"], FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
        else:
            # The flow records its outcome; if it could not (it failed before), say so.
            self.store.finish(run["key"], FAILED, error="the run ended without recording an outcome")

    def ended(self) -> list[str]:
        done = [k for k, f in self.futures.items() if f.done()]
        for key in done:
            del self.futures[key]
        return done

    def active(self) -> set[str]:
        return set(self.futures)

    def stop(self) -> list[str]:
        """Nothing is queued beyond what runs (the controller claims only free slots)."""
        return []

    def adopt(self, runs: list[dict[str, Any]]) -> set[str]:
        return set()  # threads of another process cannot be taken over

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# -- on a work pool --------------------------------------------------------------------------------
def ensure_deployment(flow: Any, pool: str) -> str:
    """A deployment of ``flow`` (the experiment flow) on work pool ``pool``, by module
    path so any worker with nepi-prefect installed can run it; returns its name."""
    name = f"campaign-{pool}"
    entrypoint = f"{flow.fn.__module__}.{flow.fn.__name__}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow.name)
        client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool,
                                 entrypoint=entrypoint,
                                 parameter_openapi_schema=parameter_schema(flow.fn).model_dump(),
                                 description="one run of a nepi-prefect campaign")
    return f"{flow.name}/{name}"


class PoolLauncher:
    """Each run is a flow run of ``deployment``; whichever worker of its pool is free takes it.

    A run whose worker died (its flow's process, a process of this host, is gone; or no
    heartbeat in the store for the lease while the flow run is pending or running; or a
    Crashed flow run) is marked Crashed and dispatched again, up to
    :data:`MAX_DISPATCHES` times. Stopping cancels the runs no worker has
    taken yet and lets the running ones end.
    """

    def __init__(self, store: CampaignStore, deployment: str, parameters: dict[str, Any],
                 lease: float | None = None, poll: float = 1.0):
        self.store = store
        self.deployment = deployment
        self.parameters = parameters
        self._experiment = (parameters.get("description") or {}).get("name")
        self.lease = settings.campaign_lease(lease)
        self.poll = poll
        self.runs: dict[str, str] = {}        # run key -> flow run id
        self._active_since: dict[tuple[str, Any], float] = {}
        self._last_poll = 0.0
        self._ended: list[str] = []

    def start(self, run: dict[str, Any], params: dict[str, Any]) -> None:
        key = run["key"]
        parameters = {**self.parameters, "overrides": params, "run_key": key}
        try:
            flow_run = with_retries(lambda: run_deployment(
                self.deployment, parameters=parameters, timeout=0, as_subflow=True,
                flow_run_name=run_name(self._experiment, params, run["rep"]),
                tags=[f"campaign:{self.store.name}"],
                # the same key and attempt never makes two flow runs, even if retried
                idempotency_key=f"{self.store.name}:{key}:{run['attempt']}"))
        except Exception as exc:
            self.store.finish(key, FAILED, error=f"dispatch failed: {type(exc).__name__}: {exc}"[:2000])
            self._ended.append(key)
            return
        self.runs[key] = str(flow_run.id)
        self.store.dispatched(key, str(flow_run.id))

    def adopt(self, runs: list[dict[str, Any]]) -> set[str]:
        """Runs a previous controller dispatched: followed, not dispatched again."""
        for run in runs:
            if run.get("flow_run_id"):
                self.runs[run["key"]] = run["flow_run_id"]
        return set(self.runs)

    def active(self) -> set[str]:
        return set(self.runs)

    def ended(self) -> list[str]:
        if self.runs and time.monotonic() - self._last_poll >= self.poll:
            self._last_poll = time.monotonic()
            try:
                self._check(self._read_states())
            except Exception as exc:
                if not transient(exc):
                    raise
        out, self._ended = self._ended, []
        return out

    def _read_states(self) -> dict[str, Any]:
        ids = list(self.runs.values())
        states: dict[str, Any] = {}
        with get_client(sync_client=True) as client:
            for i in range(0, len(ids), 200):  # the API reads at most 200 at once
                for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=ids[i:i + 200])), limit=200):
                    states[str(fr.id)] = fr.state
        return states

    def _check(self, states: dict[str, Any]) -> None:
        now = time.time()
        for key, fr_id in list(self.runs.items()):
            state = states.get(fr_id)
            row = self.store.run(key)
            if row is None or row["state"] != RUNNING:
                self._end(key)  # recorded by its flow (or reclaimed)
            elif state is not None and state.type in TERMINAL:
                self._terminal(key, row, state)
            elif state is not None and state.type in (StateType.PENDING, StateType.RUNNING):
                if self._process_gone(key, row):
                    self._lost(key, row, fr_id, f"its process {row['owner']} is gone (killed, or its worker died)")
                    continue
                # A run beats from the start of its flow; before that a worker is still
                # starting its process (slow on a loaded host): allow it a few leases.
                since = self._active_since.setdefault((key, state.type), now)
                allowed = self.lease if state.type == StateType.RUNNING else PENDING_LEASES * self.lease
                if now - max(row["heartbeat"] or 0, since) > allowed:
                    self._lost(key, row, fr_id, f"no heartbeat for {allowed:g}s: its worker died")

    def _process_gone(self, key: str, row: dict[str, Any]) -> bool:
        """The run's flow has begun in a process of this host (its owner) that no longer
        exists, and the run is still not recorded: lost now, not a lease later. The row is
        read again after the process was found gone, as a process records its outcome
        before it ends."""
        if not owner_dead(row["owner"]):
            return False
        again = self.store.run(key)
        return again is not None and again["state"] == RUNNING and again["owner"] == row["owner"]

    def _terminal(self, key: str, row: dict[str, Any], state: Any) -> None:
        if state.type in (StateType.CRASHED, StateType.CANCELLED) and row["attempt"] < MAX_DISPATCHES:
            self.store.requeue(key, f"flow run {state.name}: {state.message}")
        else:
            self.store.finish(key, FAILED, error=f"flow run {state.name}: {state.message}"[:2000])
        self._end(key)

    def _lost(self, key: str, row: dict[str, Any], fr_id: str, why: str) -> None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(fr_id, Crashed(message=why), force=True)
        if row["attempt"] < MAX_DISPATCHES:
            self.store.requeue(key, why)
        else:
            self.store.finish(key, FAILED, error=why)
        self._end(key)

    def _end(self, key: str) -> None:
        self.runs.pop(key, None)
        for since in [k for k in self._active_since if k[0] == key]:
            del self._active_since[since]
        self._ended.append(key)

    def stop(self) -> list[str]:
        """Cancel the runs no worker has taken yet; returns their keys (to do again later)."""
        try:
            states = self._read_states() if self.runs else {}
        except Exception as exc:
            if not transient(exc):
                raise
            return []  # the API is away: what was dispatched stays, the next run adopts it
        released = []
        with get_client(sync_client=True) as client:
            for key, fr_id in list(self.runs.items()):
                state = states.get(fr_id)
                if state is not None and state.type == StateType.SCHEDULED:
                    client.set_flow_run_state(fr_id, Cancelled(message="campaign stopped"), force=True)
                    self.runs.pop(key)
                    released.append(key)
        return released

    def close(self) -> None:
        pass

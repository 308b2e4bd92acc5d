"""The Prefect side of a campaign: run a prepared plan from a flow (threads or a work
pool), show progress as a Prefect progress artifact, write the tables, end
``Cancelled`` when stopped; and, inside the experiment flow, keep a run's heartbeat
and record its outcome in the store."""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.states import Cancelled

from nepi_prefect import settings
from nepi_prefect.flows.campaign import Controller, Plan, StopSignals, prepare
from nepi_prefect.flows.launchers import LocalLauncher, PoolLauncher, ensure_deployment
from nepi_prefect.orchestration.recorder import finish_background
from nepi_prefect.results.campaign import campaign_frame, point_stats, write_tables
from nepi_prefect.results.plot import attach_plot, default_plot
from nepi_prefect.results.query import environment_warnings
from nepi_prefect.results.tables import artifact_key
from nepi_prefect.results.store import DONE, FAILED, CampaignStore, campaign_dir, owner_id

log = logging.getLogger("nepi_prefect.campaign")


@dataclass
class Options:
    """How a campaign runs (the flows' and the CLI's options)."""

    results_dir: str | None = None
    concurrency: int = 4
    timeout: str | None = None
    redo: str | None = None
    work_pool: str | None = None
    deployment: str | None = None
    artifact_key: str = "nepi-campaign"
    stop: threading.Event = field(default_factory=threading.Event)


def run_campaign(experiment_flow: Any, run_point: Callable[..., None], plan: Plan, opts: Options) -> Any:
    """Run ``plan`` to its end (or until stopped); returns the result dict, or a
    ``Cancelled`` state carrying it when SIGINT/SIGTERM or ``opts.stop`` stopped it.

    Runs go to ``experiment_flow``'s deployment on a work pool, or (no pool) to
    ``run_point(desc, overrides, campaign, run_key, timeout, results_dir)`` in threads.
    """
    root = settings.results_root(opts.results_dir)
    began = time.monotonic()
    store = prepare(plan, root, opts.redo)
    preparing = time.monotonic() - began
    launcher = _launcher(experiment_flow, run_point, store, plan, opts, root)
    progress = _ProgressArtifact(plan.name, opts.artifact_key)
    controller = Controller(store, launcher, opts.concurrency, plan.stop_rule, opts.stop,
                            on_progress=progress.update)
    try:
        with StopSignals(opts.stop) as signals:
            outcome = controller.run()
    finally:
        launcher.close()
        progress.close()
        _finish_records(plan.name)
        result = _tables(plan, root, opts)
        store.close()
    result.update(counts=outcome.counts, stopped=outcome.stopped, reclaimed=len(outcome.reclaimed),
                  decide_seconds=round(preparing + outcome.decide_seconds, 3))
    _log(plan, outcome, result)
    if outcome.stopped:
        why = f"signal {signals.received[0]}" if signals.received else "asked to stop"
        return Cancelled(message=f"campaign {plan.name} stopped ({why}): {_counts_text(outcome.counts)}",
                         data=result)
    return result


def _launcher(experiment_flow: Any, run_point: Callable[..., None], store: CampaignStore,
              plan: Plan, opts: Options, root: str) -> Any:
    params = {"description": plan.desc.model_dump(mode="json"), "timeout": opts.timeout,
              "results_dir": root, "campaign": plan.name}
    if opts.work_pool or opts.deployment:
        deployment = opts.deployment or ensure_deployment(experiment_flow, opts.work_pool)
        return PoolLauncher(store, deployment, params)

    def one(run: dict[str, Any], overrides: dict[str, Any]) -> None:
        run_point(plan.desc, overrides, plan.name, run["key"], opts.timeout, root)
    return LocalLauncher(store, one, opts.concurrency)


def _tables(plan: Plan, root: str, opts: Options) -> dict[str, Any]:
    """Whatever happened: the CSV and Parquet files, and the point table as an artifact."""
    frame = campaign_frame(plan.name, root)
    paths = write_tables(plan.name, root, frame)
    paths["plot"] = _default_plot(plan.name, frame, root)
    points = point_stats(frame)
    decisions = {p["point"]: p["decision"] for p in _points(plan.name, root)}
    if plan.stop_rule is not None:
        points["decision"] = [(decisions.get(p) or {}).get("decision") for p in points["point"]]
    rows = _json_rows(frame.drop(columns=["error"]))
    point_rows = _json_rows(points)
    if FlowRunContext.get() is not None:
        create_table_artifact(table=point_rows or [{"campaign": plan.name, "runs": 0}],
                              key=opts.artifact_key,
                              description=f"campaign {plan.name}: {len(rows)} runs, "
                                          f"{len(point_rows)} points; CSV: {paths['csv']}")
    return {"campaign": plan.name, "rows": rows, "points": point_rows, "decisions": decisions,
            **paths}


def _default_plot(name: str, frame: Any, root: str) -> str | None:
    """The sweep's own plot (a varying parameter against a metric) beside its tables,
    attached to the flow run; warnings when its runs' environments differ in what matters."""
    logger = get_run_logger() if FlowRunContext.get() is not None else None
    done = frame[frame["state"] == DONE]
    done.attrs.update(frame.attrs)
    if done.empty:
        return None
    try:
        for warning in environment_warnings(done):
            if logger is not None:
                logger.warning("campaign %s: %s", name, warning)
        path = default_plot(done, campaign_dir(name, root), title=f"campaign {name}")
        if path is not None and logger is not None:
            attach_plot(path, f"campaign {name}", key=artifact_key(name, "plot"),
                        flow_run_id=FlowRunContext.get().flow_run.id)
    except Exception as exc:  # a convenience: the tables are what must be written
        if logger is not None:
            logger.warning("campaign %s: no default plot (%s: %s)", name, type(exc).__name__, exc)
        return None
    return str(path) if path is not None else None


def _points(name: str, root: str) -> list[dict[str, Any]]:
    store = CampaignStore.open(name, root, create=False)
    try:
        return store.points()
    finally:
        store.close()


def _json_rows(frame: Any) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _log(plan: Plan, outcome: Any, result: dict[str, Any]) -> None:
    if FlowRunContext.get() is None:
        return
    get_run_logger().info("campaign %s: %s%s; table %s", plan.name, _counts_text(outcome.counts),
                          " (stopped)" if outcome.stopped else "", result["csv"])


def _finish_records(name: str) -> None:
    """The runs' records went on in the background: wait for them, say what is late."""
    left = finish_background(timeout=max(30.0, settings.record_timeout()))
    if left:
        log.warning("campaign %s: the Prefect records of %d runs are not on the server yet; "
                    "they are kept in %s and go out in the background (the local server's "
                    "service, the next nepi-prefect run or `nepi-prefect server flush`)",
                    name, len(left), settings.journal_dir())


class _ProgressArtifact:
    """The campaign's progress (% of runs ended) as a Prefect progress artifact.

    Posted from a thread of its own: a busy server answers 503 and Prefect's client
    backs off for up to a minute, which must delay the artifact, never the launches.
    Only the latest figure is posted; ``close`` waits a bounded time for the last one.
    """

    def __init__(self, name: str, key: str):
        self.name = name
        self.key = f"{key}-progress"
        self.artifact_id: Any = None
        self.last = -1.0
        self._latest: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, counts: dict[str, int]) -> None:
        if FlowRunContext.get() is None:
            return
        total = sum(counts.values()) or 1
        pct = round(100.0 * (counts[DONE] + counts[FAILED]) / total, 1)
        if pct == self.last:
            return
        self.last = pct
        with self._lock:
            self._latest = (pct, f"campaign {self.name}: {_counts_text(counts)}")
        if self._thread is None:   # the artifact belongs to this flow run: copy its context
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=ctx.run, args=(self._post_loop,), daemon=True,
                                            name="nepi-campaign-progress")
            self._thread.start()
        self._wake.set()

    def _post_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                latest, self._latest = self._latest, None
            if latest is not None:
                try:
                    self._post(*latest)
                except Exception as exc:   # progress display must never stop a campaign
                    log.debug("campaign progress artifact: %s", exc)
            if self._closing.is_set() and self._latest is None:
                return

    def _post(self, pct: float, text: str) -> None:
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(progress=pct, key=self.key, description=text)
        else:
            update_progress_artifact(self.artifact_id, progress=pct, description=text)

    def close(self, timeout: float = 10.0) -> None:
        """Post the last figure, waiting at most ``timeout`` seconds for the server."""
        if self._thread is not None:
            self._closing.set()
            self._wake.set()
            self._thread.join(timeout)


# -- inside the experiment flow --------------------------------------------------------------------
class RunRecord:
    """While a campaign's run goes on: its heartbeat in the store (so a dead worker is
    noticed) and, at the end, its outcome."""

    def __init__(self, campaign: str, key: str, results_dir: str | None):
        self.store = CampaignStore.open(campaign, settings.results_root(results_dir), create=False)
        self.key = key
        self.interval = settings.campaign_lease() / 5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"nepi-heartbeat-{key}", daemon=True)

    def __enter__(self) -> "RunRecord":
        self.store.beat([self.key], owner=owner_id())
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.beat([self.key])
            except Exception:  # a busy database must not end the run; the next beat will do
                pass
        self.store.close_thread()

    def finish(self, summary: dict[str, Any], metrics: dict[str, Any],
               flow_run_id: Any = None) -> None:
        ctx = FlowRunContext.get()
        if flow_run_id is None and ctx is not None and ctx.flow_run is not None:
            flow_run_id = ctx.flow_run.id
        self.store.finish(
            self.key, DONE if summary.get("state") == "COMPLETED" else FAILED,
            exp_id=summary.get("exp_id"), run_id=summary.get("run_id"),
            run_dir=summary.get("run_dir"), metrics=metrics, worker=settings.worker_label(),
            flow_run_id=str(flow_run_id) if flow_run_id else None,
            error=summary.get("failure"))

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self._stop.set()
        self._thread.join()
        if exc is not None:
            self.store.finish(self.key, FAILED, error=f"{type(exc).__name__}: {exc}"[:2000],
                              worker=settings.worker_label())
        self.store.close()

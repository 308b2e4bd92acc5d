"""Run a campaign: claim the runs still to do from its store, keep ``concurrency`` of
them going through a launcher (threads here, or a Prefect work pool), replicate points
under a stop rule, and stop cleanly when asked.

The controller knows the store and a launcher, not how a point runs: the
launchers (``launchers.py``) start points and report when each has ended; the
outcome of a run is written to the store by whoever ran it.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from nepi_prefect.results.stoprule import StopRule
from nepi_prefect.results.store import (
    DONE,
    FAILED,
    RUNNING,
    TODO,
    CampaignStore,
    default_campaign_name,
    digest,
    point_key,
)
from nepi_prefect.spec.models import ExperimentDescription

#: progress callback: the store's counts per state
Progress = Callable[[dict[str, int]], None]


class Launcher(Protocol):
    """Starts runs and tells which have ended (their outcome is in the store)."""

    def start(self, run: dict[str, Any], params: dict[str, Any]) -> None: ...
    def ended(self) -> list[str]: ...
    def active(self) -> set[str]: ...
    def stop(self) -> list[str]: ...
    def adopt(self, runs: list[dict[str, Any]]) -> set[str]: ...


@dataclass
class Plan:
    """What a campaign runs: the description, its points, and how often each."""

    name: str
    desc: ExperimentDescription
    points: list[dict[str, Any]]
    repeat: int = 1
    stop_rule: StopRule | None = None

    @property
    def desc_hash(self) -> str:
        return digest(self.desc.model_dump(mode="json"))

    def first_reps(self) -> range:
        return range(self.stop_rule.min_runs if self.stop_rule else self.repeat)


def default_name(desc: ExperimentDescription, points: list[dict[str, Any]]) -> str:
    """The campaign of a description and its points when the user names none: running
    the same sweep again resumes it."""
    return default_campaign_name(desc.name, desc.model_dump(mode="json"), points)


def prepare(plan: Plan, root: str | None, redo: str | None = None) -> CampaignStore:
    """Open (or create) the campaign's store, register its points, apply ``redo``."""
    store = CampaignStore.open(plan.name, root)
    params = list(dict.fromkeys(k for p in plan.points for k in p))
    store.bind(desc_hash=plan.desc_hash, experiment=plan.desc.name,
               description=plan.desc.model_dump(mode="json"), params=params,
               stop_rule=plan.stop_rule.model_dump() if plan.stop_rule else None)
    reps = list(plan.first_reps())
    store.add_points([(point_key(plan.desc_hash, p), i, p, reps) for i, p in enumerate(plan.points)])
    store.redo(redo)
    return store


@dataclass
class Outcome:
    """How a campaign run ended: the counts per state, and whether it was stopped."""

    counts: dict[str, int]
    stopped: bool = False
    reclaimed: list[str] = field(default_factory=list)
    decide_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.counts.get(TODO, 0) == 0 and self.counts.get(RUNNING, 0) == 0


class StopSignals:
    """SIGINT and SIGTERM set ``event`` (instead of raising) while installed; a no-op off
    the main thread, where Python cannot install handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, event: threading.Event):
        self.event = event
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self.event.set()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Controller:
    """Keeps ``concurrency`` runs of a prepared campaign going until none is left to do,
    or ``stop`` is set."""

    def __init__(self, store: CampaignStore, launcher: Launcher, concurrency: int,
                 stop_rule: StopRule | None = None, stop: threading.Event | None = None,
                 on_progress: Progress | None = None, tick: float = 0.2):
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency}: expected a positive integer")
        self.store = store
        self.launcher = launcher
        self.concurrency = concurrency
        self.rule = stop_rule
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.tick = tick
        self._params = {p["point"]: (p["idx"], p["params"]) for p in store.points()}

    def run(self) -> Outcome:
        began = time.monotonic()
        adopted = self.launcher.adopt([r for r in self.store.runs() if r["state"] == RUNNING])
        reclaimed = self.store.reclaim(keep=adopted)
        for point in self._params:
            self._judge(point)
        decide = time.monotonic() - began
        last: dict[str, int] | None = None
        while not self.stop.is_set():
            for key in self.launcher.ended():
                self._ended(key)
            free = self.concurrency - len(self.launcher.active())
            for run in self.store.claim(free) if free > 0 and not self.stop.is_set() else []:
                self.launcher.start(run, self._params[run["point"]][1])
            counts = self.store.counts()
            last = self._report(counts, last)
            if not self.launcher.active() and counts[TODO] == 0:
                break
            self.stop.wait(self.tick)
        stopped = self.stop.is_set()
        if stopped:
            self._drain()
        counts = self.store.counts()
        self._report(counts, None)
        return Outcome(counts=counts, stopped=stopped, reclaimed=reclaimed, decide_seconds=decide)

    def _drain(self) -> None:
        """Stop launching; what had not started goes back to do; wait for the rest."""
        self.store.release(self.launcher.stop())
        while self.launcher.active():
            for key in self.launcher.ended():
                self._ended(key)
            time.sleep(self.tick)
        for key in self.launcher.ended():
            self._ended(key)

    def _ended(self, key: str) -> None:
        run = self.store.run(key)
        if run is not None and self.rule is not None:
            self._judge(run["point"])

    def _judge(self, point: str) -> None:
        """Under a stop rule, once every run of ``point`` has ended: decide, and add a
        repetition when the rule says more."""
        if self.rule is None:
            return
        runs = self.store.runs(point)
        if not runs or any(r["state"] in (TODO, RUNNING) for r in runs):
            return
        samples = [float(r["metrics"][self.rule.metric]) for r in runs
                   if r["state"] == DONE and isinstance(r["metrics"].get(self.rule.metric), (int, float))]
        ended = sum(r["state"] in (DONE, FAILED) for r in runs)
        decision = self.rule.decide(samples, ended)
        self.store.set_decision(point, decision)
        if decision["decision"] == "more":
            idx, params = self._params[point]
            self.store.add_point(point, idx, params, [max(r["rep"] for r in runs) + 1])

    def _report(self, counts: dict[str, int], last: dict[str, int] | None) -> dict[str, int]:
        if self.on_progress and counts != last:
            try:
                self.on_progress(counts)
            except Exception:  # progress display must never stop a campaign
                pass
        return counts

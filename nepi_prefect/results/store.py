"""The campaign store: one SQLite database (WAL) per campaign, shared by its processes.

Every run of a campaign (a point of the sweep times a repetition) is a row
keyed by a stable hash of the description, the point's values and the
repetition. A row is ``todo``, ``running``, ``done`` or ``failed``; claiming
rows is one transaction, so several controllers (or workers) on one campaign
never take the same run. Rows ``running`` for a process that died are
reclaimed: at once when that process ran on this host, else after the lease
(no heartbeat for ``settings.campaign_lease()`` seconds). Why SQLite: see
``docs/campaigns.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from nepi_prefect import settings
from nepi_prefect.util.procs import pid_gone

TODO, RUNNING, DONE, FAILED = "todo", "running", "done", "failed"
STATES = (TODO, RUNNING, DONE, FAILED)
REDO_CHOICES = ("failed", "all")
DB_NAME = "campaign.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS points (
    point TEXT PRIMARY KEY, idx INTEGER, params TEXT, decision TEXT);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, point TEXT, rep INTEGER, state TEXT, attempt INTEGER DEFAULT 0,
    owner TEXT, heartbeat REAL, started REAL, ended REAL, flow_run_id TEXT,
    exp_id TEXT, run_id TEXT, run_dir TEXT, worker TEXT, metrics TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
"""

_CAMPAIGN_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(name: str) -> str:
    """A campaign name is a directory name: letters, digits, ``-``, ``_`` and ``.``."""
    if not name or not set(name) <= _CAMPAIGN_NAME_CHARS or name.startswith("."):
        raise ValueError(f"campaign name {name!r}: expected letters, digits, '-', '_' or '.' "
                         "(not starting with '.')")
    return name


def campaigns_root(root: str | None = None) -> Path:
    """``<results root>/campaigns``: one directory per campaign."""
    return Path(settings.results_root(root)) / "campaigns"


def campaign_dir(name: str, root: str | None = None) -> Path:
    return campaigns_root(root) / check_name(name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any, size: int = 16) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:size]


def default_campaign_name(name: str | None, description: dict[str, Any],
                          points: list[dict[str, Any]]) -> str:
    """The campaign of a description (as JSON) and its points when the user names none:
    running the same sweep again resumes it."""
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in (name or "experiment"))
    return f"{base}-{digest([description, points], 8)}"


def point_key(desc_hash: str, params: dict[str, Any]) -> str:
    """The stable key of a point: the description's hash and the point's values."""
    return "p" + digest([desc_hash, params], 12)


def run_key(point: str, rep: int) -> str:
    """The stable key of one repetition of a point."""
    return f"{point}-r{rep}"


def owner_id() -> str:
    """``host:pid`` of this process: who holds a claimed run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process of this host that no longer exists (or is a zombie)."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    # a zombie counts: a worker's flow-run process whose worker was killed too waits
    # for an init to reap it, and some containers' never does
    return pid_gone(int(pid))


class CampaignStore:
    """The persistent state of one campaign (open with :meth:`open`)."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        # One connection per thread that uses the store: sqlite3 objects are not shared.
        self._conns: dict[int, sqlite3.Connection] = {}

    @classmethod
    def open(cls, name: str, root: str | None = None, create: bool = True) -> "CampaignStore":
        """The store of campaign ``name`` under the results root (FileNotFoundError if absent
        and not ``create``)."""
        directory = campaign_dir(name, root)
        if not create and not (directory / DB_NAME).exists():
            raise FileNotFoundError(f"no campaign {name!r} under {campaigns_root(root)}")
        directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory / DB_NAME, name)
        store._conn().executescript(_SCHEMA)  # idempotent; executescript commits by itself
        return store

    @property
    def directory(self) -> Path:
        return self.path.parent

    # -- connection ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        ident = threading.get_ident()
        conn = self._conns.get(ident)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # WAL: readers never block the writer; FULL: a committed row survives a power cut.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._conns[ident] = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): claims never interleave."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close_thread(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        conn = self._conns.pop(threading.get_ident(), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # -- the campaign's description ---------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        rows = self._conn().execute("SELECT name, value FROM meta").fetchall()
        return {r["name"]: json.loads(r["value"]) for r in rows}

    def bind(self, **values: Any) -> dict[str, Any]:
        """Record the campaign's description etc. the first time; later runs must match
        on ``desc_hash`` (ValueError otherwise). Other values are updated."""
        with self._tx() as db:
            old = {r["name"]: json.loads(r["value"])
                   for r in db.execute("SELECT name, value FROM meta").fetchall()}
            if "desc_hash" in old and old["desc_hash"] != values.get("desc_hash", old["desc_hash"]):
                raise ValueError(
                    f"campaign {self.name!r} was started with another description "
                    f"(hash {old['desc_hash']}, now {values['desc_hash']}); give another "
                    "--campaign name, or remove the campaign directory "
                    f"{self.directory} to start over")
            old.setdefault("created", time.time())
            old.update(values)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [(k, _canonical(v)) for k, v in old.items()])
        return old

    # -- points and runs ----------------------------------------------------------------------------
    def add_point(self, point: str, idx: int, params: dict[str, Any], reps: Iterable[int]) -> None:
        """Register a point and its repetitions (existing ones are kept as they are)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO points (point, idx, params) VALUES (?, ?, ?)",
                       (point, idx, _canonical(params)))
            db.executemany("INSERT OR IGNORE INTO runs (key, point, rep, state) VALUES (?, ?, ?, ?)",
                           [(run_key(point, r), point, r, TODO) for r in reps])

    def add_points(self, points: list[tuple[str, int, dict[str, Any], Iterable[int]]]) -> None:
        """:meth:`add_point` for many, in one transaction."""
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO points (point, idx, params) VALUES (?, ?, ?)",
                           [(p, i, _canonical(v)) for p, i, v, _ in points])
            db.executemany("INSERT OR IGNORE INTO runs (key, point, rep, state) VALUES (?, ?, ?, ?)",
                           [(run_key(p, r), p, r, TODO) for p, _, _, reps in points for r in reps])

    def points(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM points ORDER BY idx").fetchall()
        return [{"point": r["point"], "idx": r["idx"], "params": json.loads(r["params"]),
                 "decision": json.loads(r["decision"]) if r["decision"] else None} for r in rows]

    def set_decision(self, point: str, decision: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE points SET decision = ? WHERE point = ?", (_canonical(decision), point))

    def runs(self, point: str | None = None) -> list[dict[str, Any]]:
        """Every run (of ``point``), point order then repetition."""
        sql = ("SELECT runs.*, points.idx, points.params FROM runs JOIN points USING (point)"
               + (" WHERE point = ?" if point else "") + " ORDER BY points.idx, runs.rep")
        rows = self._conn().execute(sql, (point,) if point else ()).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row["params"] = json.loads(row["params"])
            row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else {}
            out.append(row)
        return out

    def run(self, key: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def counts(self) -> dict[str, int]:
        """Runs per state, every state present."""
        rows = self._conn().execute("SELECT state, COUNT(*) AS n FROM runs GROUP BY state").fetchall()
        found = {r["state"]: r["n"] for r in rows}
        return {s: found.get(s, 0) for s in STATES}

    # -- life cycle of a run ------------------------------------------------------------------------
    def redo(self, which: str | None) -> int:
        """Put ``failed`` (or ``all``) runs back to do; returns how many."""
        if which is None:
            return 0
        if which not in REDO_CHOICES:
            raise ValueError(f"redo {which!r}: expected one of {', '.join(REDO_CHOICES)}")
        where = "state = 'failed'" if which == "failed" else "state != 'todo'"
        with self._tx() as db:
            count = db.execute(f"UPDATE runs SET state = 'todo', error = NULL, metrics = NULL, "
                               f"flow_run_id = NULL, owner = NULL WHERE {where}").rowcount
            if which == "all":
                db.execute("UPDATE points SET decision = NULL")
        return count

    def reclaim(self, lease: float | None = None, keep: Iterable[str] = ()) -> list[str]:
        """Put back to do the runs in progress of dead processes: dead on this host, or
        silent for ``lease`` seconds. ``keep``: keys someone is known to be tracking."""
        lease = settings.campaign_lease(lease)
        keep = set(keep)
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT key, owner, heartbeat, started FROM runs "
                              "WHERE state = 'running'").fetchall()
            lost = [r["key"] for r in rows if r["key"] not in keep and (
                owner_dead(r["owner"]) or now - (r["heartbeat"] or r["started"] or 0) > lease)]
            db.executemany("UPDATE runs SET state = 'todo', owner = NULL, flow_run_id = NULL "
                           "WHERE key = ? AND state = 'running'", [(k,) for k in lost])
        return lost

    def claim(self, limit: int, owner: str | None = None) -> list[dict[str, Any]]:
        """Take up to ``limit`` runs to do (point order) for ``owner``; they become running."""
        if limit <= 0:
            return []
        owner = owner or owner_id()
        now = time.time()
        with self._tx() as db:
            keys = [r["key"] for r in db.execute(
                "SELECT key FROM runs JOIN points USING (point) WHERE state = 'todo' "
                "ORDER BY points.idx, runs.rep LIMIT ?", (limit,)).fetchall()]
            db.executemany("UPDATE runs SET state = 'running', owner = ?, heartbeat = ?, "
                           "started = ?, ended = NULL, attempt = attempt + 1, error = NULL "
                           "WHERE key = ?", [(owner, now, now, k) for k in keys])
        return [r for r in (self.run(k) for k in keys) if r]

    def dispatched(self, key: str, flow_run_id: str) -> None:
        """``key`` went to flow run ``flow_run_id``: no owner until that flow's process names
        itself (:meth:`beat`). The dispatcher is not the owner: were it gone, a flow run still
        starting would look lost."""
        with self._tx() as db:
            db.execute("UPDATE runs SET flow_run_id = ?, heartbeat = ?, owner = NULL WHERE key = ?",
                       (flow_run_id, time.time(), key))

    def beat(self, keys: Iterable[str], owner: str | None = None) -> None:
        """Heartbeat of runs in progress (and, given ``owner``, who now runs them)."""
        keys = list(keys)
        if not keys:
            return
        now = time.time()
        with self._tx() as db:
            if owner:
                db.executemany("UPDATE runs SET heartbeat = ?, owner = ? "
                               "WHERE key = ? AND state = 'running'", [(now, owner, k) for k in keys])
            else:
                db.executemany("UPDATE runs SET heartbeat = ? WHERE key = ? AND state = 'running'",
                               [(now, k) for k in keys])

    def finish(self, key: str, state: str, **fields: Any) -> bool:
        """End a running run as ``done`` or ``failed`` with its fields (metrics, run_dir, ...).
        False when the run was no longer running (someone else ended or reclaimed it)."""
        if state not in (DONE, FAILED):
            raise ValueError(f"finish state {state!r}: expected {DONE!r} or {FAILED!r}")
        allowed = {"exp_id", "run_id", "run_dir", "flow_run_id", "worker", "metrics", "error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown run fields {sorted(unknown)}; expected {sorted(allowed)}")
        if "metrics" in fields:
            fields["metrics"] = _canonical(fields["metrics"] or {})
        sets = "".join(f", {k} = ?" for k in fields)
        with self._tx() as db:
            changed = db.execute(f"UPDATE runs SET state = ?, ended = ?{sets} "
                                 "WHERE key = ? AND state = 'running'",
                                 (state, time.time(), *fields.values(), key)).rowcount
        return bool(changed)

    def release(self, keys: Iterable[str]) -> None:
        """Give back runs that were claimed but not started (a stopping controller)."""
        with self._tx() as db:
            db.executemany("UPDATE runs SET state = 'todo', owner = NULL, flow_run_id = NULL, "
                           "attempt = MAX(attempt - 1, 0) WHERE key = ? AND state = 'running'",
                           [(k,) for k in keys])

    def requeue(self, key: str, error: str) -> None:
        """A run was lost (its worker died): to do again, the reason kept."""
        with self._tx() as db:
            db.execute("UPDATE runs SET state = 'todo', owner = NULL, flow_run_id = NULL, "
                       "error = ? WHERE key = ? AND state = 'running'", (error, key))

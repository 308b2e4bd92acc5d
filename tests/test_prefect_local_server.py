"""The embedded default, with real processes: nepi-prefect's local Prefect server.

No PREFECT_API_URL: the first experiment starts one server per PREFECT_HOME (a
fresh one and a free port per test), later ones reuse it, a SIGKILLed script's
run still shows up (Crashed), and nothing but the documented server outlives a
command; ``nepi-prefect server stop`` stops that too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.settings import PREFECT_API_URL, temporary_settings

from nepi_prefect.orchestration import dbtemplate
from tests.fixtures.prefect_api import nepi_cli
from tests.test_prefect_process import SCRIPT

# real servers and processes on a possibly saturated machine: minutes, not seconds
pytestmark = [pytest.mark.prefect, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
PING = str(ROOT / "examples" / "ping.yaml")
DEADLINE = 300.0   # the machine may be saturated: generous, never a speed claim


def _run(local, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run(nepi_cli() + list(args), env=local.env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _flow_runs(local, tag: str | None):
    """Flow runs tagged ``tag`` (all if None) with their task runs; [] while the server is
    not up."""
    with temporary_settings(updates={PREFECT_API_URL: local.api_url}):
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[tag]) if tag else None))
                return [(run, client.read_task_runs(flow_run_filter=FlowRunFilter(
                    id=dict(any_=[run.id])), limit=200)) for run in runs]
        except httpx.TransportError:
            return []


def _completed(run) -> bool:
    """Completed on the server; a run read between the write of its row and the write of its
    state has no state yet (the server's recorder writes them apart)."""
    return run.state is not None and run.state.is_completed()


def _until(condition, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "experiment.py"
    path.write_text(SCRIPT)
    return path


def test_eight_concurrent_first_runs_share_one_server(local_home):
    procs = [subprocess.Popen(nepi_cli() + ["run", PING], env=local_home.env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(8)]
    outputs = [proc.communicate(timeout=DEADLINE)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        # 0, or 3 if the record was still on its way when the run ended (busy machine)
        assert proc.returncode in (0, 3), output
        assert "Traceback" not in output and "COMPLETED" in output, output
    assert len(local_home.servers()) == 1, local_home.servers()
    # the experiments left nothing behind
    assert sorted(local_home.processes()) == sorted(local_home.service())
    log = (local_home.home / "nepi-server.log").read_text()
    for alarming in ("alembic", "already in use", "Reactive triggers not started"):
        assert alarming not in log, log[-3000:]
    flushed = _run(local_home, "server", "flush")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr

    def complete():
        runs = _flow_runs(local_home, "ping")
        done = [run for run, tasks in runs if _completed(run) and len(tasks) >= 10
                and all(_completed(task) for task in tasks)]
        return len(done) == 8 and runs
    runs = _until(complete, "eight complete records")
    assert len({run.id for run, _ in runs}) == 8


def test_sigkilled_script_shows_up_crashed_and_the_ui_answers_live(local_home, tmp_path):
    script = _script(tmp_path)
    killed = subprocess.Popen([sys.executable, str(script), "killed", "hang"], env=local_home.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "STARTED"
        # live: the flow run and its task runs are on the server while the script runs
        _until(lambda: any(len(tasks) >= 7 for _, tasks in _flow_runs(local_home, "killed")),
               "the live record")
        [(run, _)] = _flow_runs(local_home, "killed")
        assert run.state.is_running()
        page_url = f"http://127.0.0.1:{local_home.port}/runs/flow-run/{run.id}"
        request = urllib.request.Request(page_url, headers={"accept": "text/html"})
        with urllib.request.urlopen(request, timeout=60) as page:   # the UI answers
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        killed.kill()
        killed.wait(timeout=60)

    # The next nepi-prefect process ships the orphaned journal in the background.
    later = subprocess.Popen([sys.executable, str(script), "later", "hang"], env=local_home.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert later.stdout.readline().strip() == "STARTED"

        def crashed():
            runs = _flow_runs(local_home, "killed")
            final = runs and all(x.state is not None for x in [runs[0][0], *runs[0][1]])
            return final and runs[0][0].state.is_crashed() and runs
        [(run, tasks)] = _until(crashed, "the killed run to end Crashed")
        assert "ended before the experiment did" in run.state.message
        names = {task.name.split("-")[0] for task in tasks}
        assert {"deploy", "start"} <= names
        assert all(task.state.is_final() for task in tasks)
    finally:
        later.send_signal(signal.SIGTERM)   # an exit: it releases and closes its record
        later.communicate(timeout=DEADLINE)
    assert not list((local_home.home / "nepi-journal").glob("*.jsonl")) or \
        _run(local_home, "server", "flush").returncode == 0


def test_run_prints_the_link_and_leaves_only_the_documented_server(local_home):
    started = _run(local_home, "server", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"UI: http://127.0.0.1:{local_home.port}" in started.stdout
    done = _run(local_home, "run", PING)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert f"flow run: http://127.0.0.1:{local_home.port}/runs/flow-run/" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert sorted(local_home.processes()) == sorted(local_home.service())
    assert len(local_home.servers()) == 1
    status = _run(local_home, "server", "status")
    assert status.returncode == 0 and f"UI: http://127.0.0.1:{local_home.port}" in status.stdout
    stopped = _run(local_home, "server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    _until(lambda: not local_home.processes(), "the server to go")
    assert _run(local_home, "server", "status").returncode == 3


def test_sweep_leaves_only_the_server(local_home):
    done = _run(local_home, "sweep", PING, "--param", "ping.count=1,2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert sorted(local_home.processes()) == sorted(local_home.service())
    assert len(local_home.servers()) == 1


def test_a_flow_called_without_an_api_runs_on_the_local_server(local_home):
    """``python flows/experiment.py`` (a plain call of the flow) with no PREFECT_API_URL: the
    flow run and its record go to the local server, not to a temporary API of Prefect's
    that dies with the process (the record could not reach it: the run used to fail)."""
    done = subprocess.run([sys.executable, str(ROOT / "flows" / "experiment.py"), PING],
                          env=local_home.env, capture_output=True, text=True, timeout=DEADLINE,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"View at http://127.0.0.1:{local_home.port}/runs/flow-run/" in done.stdout + done.stderr
    assert sorted(local_home.processes()) == sorted(local_home.service()), \
        "only the documented server may outlive the flow (no temporary API of Prefect's)"
    [(run, tasks)] = _until(lambda: [(r, t) for r, t in _flow_runs(local_home, None)
                                     if _completed(r) and len(t) >= 10], "the flow run's record")
    assert run.name == "ping" and {t.name for t in tasks} >= {"deploy-ping", "start-ping"}


def test_saturated_machine_still_records(local_home):
    """Two busy loops per core: no start-up timeout aborts the run; the record arrives."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=local_home.env)
            for _ in range(2 * (os.cpu_count() or 1))]
    try:
        done = _run(local_home, "run", PING)
        assert done.returncode in (0, 3), done.stdout + done.stderr
        assert "COMPLETED" in done.stdout and "Traceback" not in done.stdout + done.stderr
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert _run(local_home, "server", "flush").returncode == 0
    _until(lambda: any(_completed(run) and len(tasks) >= 10
                       for run, tasks in _flow_runs(local_home, "ping")), "the record")


def test_a_fresh_home_starts_from_the_template_database(local_home, tmp_path):
    """The first server makes the template (in the background, a child of the service);
    a fresh home then starts from a copy of it and records as usual."""
    local_home.env["NEPI_PREFECT_DB_TEMPLATE_DIR"] = str(tmp_path / "templates")
    assert _run(local_home, "server", "start").returncode == 0
    template = _until(lambda: next((tmp_path / "templates").glob("prefect-*-empty.db"), None),
                      "the template database")
    assert _run(local_home, "server", "stop").returncode == 0
    _until(lambda: not local_home.processes(), "the service to go")
    assert not list((tmp_path / "templates").glob("*.new*")), "scratch files left"
    with contextlib.closing(sqlite3.connect(template)) as db:   # a mark only a copy can carry
        db.execute("CREATE TABLE nepi_seed_mark (x)")
        db.commit()
    for path in local_home.home.glob("prefect.db*"):
        path.unlink()
    done = _run(local_home, "run", PING)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    with contextlib.closing(sqlite3.connect(local_home.home / "prefect.db")) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'nepi_seed_mark'").fetchall()
    _until(lambda: any(_completed(run) for run, _ in _flow_runs(local_home, "ping")),
           "the record in the seeded database")


def test_the_template_never_replaces_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("NEPI_PREFECT_DB_TEMPLATE_DIR", str(tmp_path))
    template = dbtemplate.template_path()
    template.write_bytes(b"template")
    home = tmp_path / "home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"mine")
    assert not dbtemplate.seed(home, {})
    assert (home / "prefect.db").read_bytes() == b"mine"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    custom = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://db/prefect"}
    assert not dbtemplate.seed(fresh, custom) and not (fresh / "prefect.db").exists()
    assert dbtemplate.seed(fresh, {}) and (fresh / "prefect.db").read_bytes() == b"template"
    monkeypatch.setenv("NEPI_PREFECT_DB_TEMPLATE_DIR", "0")
    assert dbtemplate.template_path() is None



def test_server_stop_right_after_a_large_record_loses_no_event(local_home):
    """The server writes its event feed well after the task runs; a stop waits for it.
    (The run's resource feed follows its final state: the service ships it from the
    journal once the server has caught up with the task runs.)"""
    rms = 400
    script = ROOT / "tests" / "fixtures" / "trivial_rms.py"
    done = subprocess.run([sys.executable, str(script), str(rms), "drain"], env=local_home.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stdout + done.stderr
    # the record is whole (its flow run's final state is the last thing written) ...
    _until(lambda: any(_completed(run) for run, _ in _flow_runs(local_home, "drain")),
           "the flow run to complete")
    _until(lambda: not list((local_home.home / "nepi-journal").glob("*.jsonl")),
           "the resource feed to leave the journal")
    # ... and the server is stopped at once
    stopped = _run(local_home, "server", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with contextlib.closing(sqlite3.connect(local_home.home / "prefect.db")) as db:
        resource_events = db.execute(
            "SELECT count(*) FROM events WHERE event LIKE 'nepi.resource.%'").fetchone()[0]
        task_runs = db.execute("SELECT count(*) FROM task_run").fetchone()[0]
    # ready, started, stopped, released per RM; deploy, start, stop, release (+ the barrier)
    assert resource_events == 4 * rms
    assert task_runs == 4 * rms + 1

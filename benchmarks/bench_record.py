"""What the Prefect record costs, side by side with the engine alone.

    python benchmarks/bench_record.py [--rms 1000] [--only ping|many|concurrent] [--skip-concurrent]

1. ``nepi-prefect run examples/ping.yaml``, wall time: the engine alone
   (``--recorder none``), recording with the local server already up, and
   recording from a fresh PREFECT_HOME (the server's start included), both
   from the template database and as the first home of this Prefect version
   on the machine (which makes the template).
2. 1000 trivial RMs (deploy/start/stop/release): the process's exit time with
   and without recording, how long after the exit the run page is complete on
   the server (task runs, logs, final state), and then its resource feed.
3. 8 concurrent ``run examples/ping.yaml`` on a fresh PREFECT_HOME: exit codes,
   server processes, and when all eight records are complete on the server.

Every server runs under a temporary PREFECT_HOME on a free port; each is
stopped at the end (``nepi-prefect server stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).with_name("nepi-prefect"))]
PING = str(ROOT / "examples" / "ping.yaml")

# N trivial RMs, deploy/start/stop/release; its last line: flow run id, task runs, delivered
CHILD = [sys.executable, str(ROOT / "tests" / "fixtures" / "trivial_rms.py")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HOMES: list[str] = []   # every temporary PREFECT_HOME, removed at the end


def fresh_env(recorder: str = "prefect") -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="nepi-bench-record-")
    HOMES.append(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=home, NEPI_PREFECT_SERVER_PORT=str(free_port()),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", NEPI_PREFECT_RECORDER=recorder,
               NEPI_PREFECT_RESULTS=os.path.join(home, "results"), PYTHONPATH=str(ROOT))
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    return time.perf_counter() - started, done


def api(env: dict[str, str], path: str, body: dict) -> Any:
    import httpx

    url = f"http://127.0.0.1:{env['NEPI_PREFECT_SERVER_PORT']}/api/{path}"
    return httpx.post(url, json=body, timeout=60).json()


def final_task_runs(env: dict[str, str], flow_run_id: str) -> int:
    """How many of the flow run's task runs are in a final state (one cheap count
    query: paging through 4000 task runs every quarter second would itself slow the
    server it measures)."""
    return api(env, "task_runs/count", {
        "flow_runs": {"id": {"any_": [flow_run_id]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CANCELLED"]}}}})


def flow_run_final(env: dict[str, str], flow_run_id: str) -> bool:
    """The flow run has its final state: the last thing a record sets, after every
    task run, event and log went in."""
    found = api(env, "flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 1})
    return bool(found) and (found[0].get("state") or {}).get("type") in (
        "COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def feed_events(env: dict[str, str], exp_id: str) -> int:
    """How many ``nepi.resource.*`` events of the experiment the server has stored (its
    home holds this one run). By resource id: a filter on the related flow run joins
    the related-resource rows and cost the server 0.08-0.10 s a look, every half
    second, slowing the ingestion it measures; this one 0.02-0.045 s."""
    page = api(env, "events/filter", {"filter": {
        "event": {"prefix": ["nepi.resource."]},
        "resource": {"id_prefix": [f"nepi.resource.{exp_id}."]}}, "limit": 1})
    return page["total"]


def servers(env: dict[str, str]) -> int:
    marker = f"PREFECT_HOME={env['PREFECT_HOME']}\0".encode()
    found = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes() and \
                    b"server\0start" in (proc / "cmdline").read_bytes():
                found += 1
        except OSError:
            pass
    return found


def bench_ping() -> None:
    alone, done = timed(CLI + ["run", PING, "--recorder", "none"], fresh_env("none"))
    assert done.returncode == 0, done.stderr
    templates = tempfile.mkdtemp(prefix="nepi-bench-templates-")
    HOMES.append(templates)
    first = fresh_env()   # the first fresh home of this Prefect version: no template yet
    first["NEPI_PREFECT_DB_TEMPLATE_DIR"] = templates
    untemplated, done_first = timed(CLI + ["run", PING], first)
    deadline = time.monotonic() + 300   # its service makes the template meanwhile
    while not list(Path(templates).glob("prefect-*-empty.db")) and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run(CLI + ["server", "stop"], env=first, capture_output=True)
    env = fresh_env()
    env["NEPI_PREFECT_DB_TEMPLATE_DIR"] = templates
    cold, done_cold = timed(CLI + ["run", PING], env)
    warm, done_warm = timed(CLI + ["run", PING], env)
    subprocess.run(CLI + ["server", "stop"], env=env, capture_output=True)
    print("1. nepi-prefect run examples/ping.yaml (wall time)")
    print(f"   engine alone (--recorder none)      {alone:6.2f} s")
    print(f"   recorded, server already up         {warm:6.2f} s  (+{warm - alone:.2f} s; "
          f"target +1 s; exit {done_warm.returncode})")
    print(f"   recorded, fresh PREFECT_HOME        {cold:6.2f} s  (+{cold - alone:.2f} s; "
          f"target +8 s; exit {done_cold.returncode})")
    print(f"   the same, first on this machine     {untemplated:6.2f} s  (+{untemplated - alone:.2f} s; "
          f"no template database yet; exit {done_first.returncode})")


EXP_ID = "bench-record"   # of the 1000-RM experiment


def bench_many(n: int) -> None:
    alone, done = timed(CHILD + [str(n), EXP_ID], fresh_env("none"))
    assert done.returncode == 0, done.stderr
    env = fresh_env()
    subprocess.run(CLI + ["server", "start"], env=env, capture_output=True, check=True)
    recorded, done = timed(CHILD + [str(n), EXP_ID], env)
    exited = time.perf_counter()
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    visible, curve = None, []
    while time.perf_counter() - exited < 300:
        final = final_task_runs(env, info["flow_run_id"]) if info["flow_run_id"] != "None" else 0
        curve.append((time.perf_counter() - exited, final))
        if final >= info["expected"] and flow_run_final(env, info["flow_run_id"]):
            visible = time.perf_counter() - exited
            break
        time.sleep(0.25)
    # then the resource feed: ready, started, stopped and released of each RM
    fed, fed_at = 0, visible
    while visible is not None and fed < 4 * n and time.perf_counter() - exited < 300:
        count = feed_events(env, EXP_ID)
        if count > fed:
            fed, fed_at = count, time.perf_counter() - exited
        time.sleep(0.5)
    if os.environ.get("BENCH_CURVE"):
        print("   final task runs after the exit: " +
              ", ".join(f"{t:.0f}s:{n}" for t, n in curve[::4] + curve[-1:]))
    subprocess.run(CLI + ["server", "stop"], env=env, capture_output=True)
    print(f"2. {n} trivial RMs, deploy/start/stop/release ({info['expected']} task runs)")
    print(f"   process exit, engine alone          {alone:6.2f} s")
    print(f"   process exit, recorded              {recorded:6.2f} s  (+{recorded - alone:.2f} s; "
          f"target +2 s; handed over before exit: {info['delivered']})")
    print("   run page complete (every task run final, logs, then the flow run)  " +
          (f"{visible:6.2f} s after the exit (target 15 s)" if visible is not None
           else "NOT within 300 s"))
    if visible is not None:
        print(f"   resource feed complete ({fed} of {4 * n} nepi.resource events) "
              f"{fed_at:6.2f} s after the exit")
    if fed < 4 * n:   # say why: the server's warnings, and any journal left
        log = Path(env["PREFECT_HOME"]) / "nepi-server.log"
        said = [line for line in log.read_text(errors="replace").splitlines()
                if "WARNING" in line or "ERROR" in line]
        print("   server warnings:\n     " + "\n     ".join(said[-10:] or ["none"]))
        print(f"   journals left: {sorted(p.name for p in Path(env['PREFECT_HOME']).glob('nepi-journal/*'))}")


def bench_concurrent() -> None:
    env = fresh_env()
    started = time.perf_counter()
    procs = [subprocess.Popen(CLI + ["run", PING], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(8)]
    codes = [proc.wait(timeout=900) for proc in procs]
    elapsed = time.perf_counter() - started
    running = servers(env)
    left = len(list(Path(env["PREFECT_HOME"], "nepi-journal").glob("*.jsonl")))
    if left:   # records the runs did not hand over before exiting: ship them now
        subprocess.run(CLI + ["server", "flush"], env=env, capture_output=True)
    complete_at = None
    while time.perf_counter() - started < 600:
        runs = api(env, "flow_runs/filter", {"flow_runs": {"tags": {"all_": ["ping"]}},
                                             "limit": 200})
        if sum(1 for r in runs if r["state_type"] == "COMPLETED") == 8:
            complete_at = time.perf_counter() - started
            break
        time.sleep(0.25)
    subprocess.run(CLI + ["server", "stop"], env=env, capture_output=True)
    print("3. 8 concurrent `run examples/ping.yaml` on a fresh PREFECT_HOME")
    print(f"   all exited after {elapsed:.2f} s, exit codes {codes}; server processes: {running}; "
          f"journals left for a flush: {left}")
    print("   eight COMPLETED flow runs on the server " +
          (f"{complete_at:.2f} s after the start" if complete_at else "NOT within 600 s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rms", type=int, default=1000)
    parser.add_argument("--only", choices=["ping", "many", "concurrent"], action="append",
                        help="run only these parts (repeatable; default: all three)")
    parser.add_argument("--skip-concurrent", action="store_true")
    args = parser.parse_args()
    parts = args.only or ["ping", "many"] + ([] if args.skip_concurrent else ["concurrent"])
    print(f"load average: {os.getloadavg()}")
    try:
        if "ping" in parts:
            bench_ping()
        if "many" in parts:
            bench_many(args.rms)
        if "concurrent" in parts:
            bench_concurrent()
    finally:
        for home in HOMES:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

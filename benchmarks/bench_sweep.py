"""Campaign speed: parallel points, resuming a killed campaign, and two workers on a pool.

    python benchmarks/bench_sweep.py [--parts parallel,resume,pool]

1. 8 points of a 1 s experiment at concurrency 4 (server warm) beside the same 8 run
   serially and one point alone; target: at most 2 s + twice the single-point time.
2. A 100-point campaign of trivial experiments, ``nepi-prefect sweep`` SIGKILLed at about
   half, then resumed: points done before, points run by the resumed sweep, and the
   seconds spent deciding what is done.
3. 8 points of a 1 s experiment on a work pool served by one, then two process workers:
   the points each worker ran and the wall times.

Uses PREFECT_API_URL if set, else starts its own ``prefect server`` (free port, temporary
home); stops what it started, every worker included, at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.prefect_api import free_port, launch_server, stop_server  # noqa: E402
from tests.fixtures.prefect_workers import create_pool, marked, start_worker, stop_worker  # noqa: E402

CLI = str(Path(sys.executable).with_name("nepi-prefect"))
APP = {"name": "bench", "resources": [
    {"name": "node", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}},
    {"name": "app", "rtype": "LinuxApplication", "attributes": {"command": "true"}}],
    "connections": [["node", "app"]]}


def _desc(name: str):
    from nepi_prefect.spec.models import ExperimentDescription
    return ExperimentDescription.model_validate({**APP, "name": name})


def _sweep(results: str, name: str, commands: list[str], concurrency: int, **kw) -> tuple[float, dict]:
    from nepi_prefect.flows.sweep import sweep_flow
    began = time.perf_counter()
    state = sweep_flow(description=_desc(name), grid={"app.command": commands}, campaign=name,
                       max_concurrency=concurrency, results_dir=results, return_state=True, **kw)
    wall = time.perf_counter() - began
    assert state.is_completed(), state.message
    return wall, state.result()


def bench_parallel(results: str) -> None:
    tag = uuid.uuid4().hex[:6]
    _sweep(results, f"warm-{tag}", ["true"], 1)
    single, _ = _sweep(results, f"single-{tag}", ["sleep 1"], 1)
    cmds = [f"sleep 1; echo {i}" for i in range(8)]
    serial, _ = _sweep(results, f"serial-{tag}", cmds, 1)
    parallel, res = _sweep(results, f"par-{tag}", cmds, 4)
    target = 2 + 2 * single
    print(f"parallel: 8 points x 1 s, concurrency 4: {parallel:.2f} s "
          f"(serial {serial:.2f} s, one point {single:.2f} s, target <= {target:.2f} s: "
          f"{'met' if parallel <= target else 'NOT met'}); done {res['counts']['done']}")


def bench_resume(results: str, env: dict) -> None:
    from nepi_prefect.results.store import CampaignStore

    name = f"resume-{uuid.uuid4().hex[:6]}"
    desc = Path(results) / "trivial.yaml"
    desc.write_text("name: trivial\nresources:\n"
                    "  - {name: node, rtype: LinuxNode, attributes: {hostname: localhost}}\n"
                    "  - {name: app, rtype: LinuxApplication, attributes: {command: 'true'}}\n"
                    "connections: [[node, app]]\n")
    values = ",".join(f"echo {i}" for i in range(100))
    cmd = [CLI, "sweep", str(desc), "--param", f"app.command={values}", "--campaign", name,
           "--max-concurrency", "8", "--results", results]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    counts = {}
    while proc.poll() is None:
        try:
            store = CampaignStore.open(name, results, create=False)
            counts = store.counts()
            store.close()
        except FileNotFoundError:
            pass
        if counts.get("done", 0) >= 50:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = time.perf_counter() - began
    store = CampaignStore.open(name, results, create=False)
    before = store.counts()
    store.close()
    from nepi_prefect.flows.sweep import sweep_flow
    began = time.perf_counter()
    state = sweep_flow(description_file=str(desc), grid={"app.command": values.split(",")},
                       campaign=name, max_concurrency=8, results_dir=results, return_state=True)
    second = time.perf_counter() - began
    res = state.result()
    ran = res["counts"]["done"] + res["counts"]["failed"] - before["done"] - before["failed"]
    print(f"resume: 100 points; killed after {first:.1f} s with {before['done']} done, "
          f"{before['running']} running; the resumed sweep ran {ran} points in {second:.1f} s "
          f"(now {res['counts']['done']} done, {res['counts']['failed']} failed), "
          f"deciding what was done took {res['decide_seconds']:.3f} s")


def bench_pool(results: str, env: dict) -> None:
    tag = uuid.uuid4().hex[:6]
    pool = f"bench-pool-{tag}"
    create_pool(env, pool)
    workers: dict = {}
    try:
        walls = {}
        for count in (1, 2):
            label = "AB"[count - 1]
            marker = f"nepi-i12-bench-{tag}-{label}"
            workers[label] = (start_worker(env, pool, label, marker, Path(results) / f"w{label}.log"),
                              marker)
            _sweep(results, f"poolwarm-{tag}-{count}", ["true"] * 1, 1, work_pool=pool)
            walls[count], res = _sweep(results, f"pool{count}-{tag}",
                                       [f"sleep 1; echo {i}" for i in range(8)], 4, work_pool=pool)
            per = {w: sum(1 for r in res["rows"] if r["worker"] == w) for w in workers}
            print(f"pool: {count} worker(s): 8 points x 1 s at concurrency 4 in {walls[count]:.1f} s; "
                  f"points per worker {per}")
    finally:
        for proc, marker in workers.values():
            stop_worker(proc, marker)
    left = [m for _, m in workers.values() if marked(m)]
    print(f"pool: workers stopped ({'processes left: ' + str(left) if left else 'none left'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="parallel,resume,pool")
    args = parser.parse_args()
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(tempfile.mkdtemp(prefix="nepi-bench-sweep-"))
        port = free_port()
        server = launch_server(home, port)
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    os.environ.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    env = dict(os.environ)
    results = tempfile.mkdtemp(prefix="nepi-bench-sweep-results-")
    try:
        parts = args.parts.split(",")
        if "parallel" in parts:
            bench_parallel(results)
        if "resume" in parts:
            bench_resume(results, env)
        if "pool" in parts:
            bench_pool(results, env)
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    main()

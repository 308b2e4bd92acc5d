"""What the Prefect record costs: 1000 trivial RMs, with and without the Prefect bridge.

Each RM is deployed, started and stopped (a STOP condition on itself), then
released: four task runs per RM, plus the group barrier. Each mode runs in its
own subprocess so that peak memory (ru_maxrss) is its own.

    python benchmarks/bench_prefect.py [--rms 1000]

Uses PREFECT_API_URL if set, else the embedded ephemeral API under a fresh
PREFECT_HOME (started before the measurement, as a warm-up experiment).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trivial_type() -> str:
    from nepi_prefect.execution.resource import ResourceFactory, ResourceManager, clsinit_copy

    @clsinit_copy
    class BenchTrivial(ResourceManager):
        _rtype = "BenchTrivial"

    ResourceFactory.register_type(BenchTrivial)
    return BenchTrivial.get_rtype()


def _experiment(n: int, recorder, results: str) -> tuple[float, float, object]:
    """Run one experiment; return (seconds until all released, seconds in shutdown)."""
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.resource import ResourceAction, ResourceState

    rtype = _trivial_type()
    started = time.perf_counter()
    ec = ExperimentController(exp_id=f"bench-{n}", local_dir=results, recorder=recorder)
    guids = [ec.register_resource(rtype) for _ in range(n)]
    for guid in guids:
        ec.register_condition(guid, ResourceAction.STOP, guid, ResourceState.STARTED)
    ec.deploy()
    assert ec.wait(guids, states=(ResourceState.STOPPED,), timeout=600) is not False
    ec.release()
    experiment = time.perf_counter() - started
    started = time.perf_counter()
    ec.shutdown()
    return experiment, time.perf_counter() - started, ec


def _child(mode: str, n: int) -> None:
    from nepi_prefect.execution.recording import Recorder

    results = tempfile.mkdtemp(prefix="nepi-bench-")
    if mode == "prefect":
        from nepi_prefect.orchestration.recorder import PrefectRecorder

        _experiment(2, PrefectRecorder(), results)   # warm-up: API up, flow registered
        recorder = PrefectRecorder()
    else:
        recorder = Recorder()
    experiment, shutdown, ec = _experiment(n, recorder, results)
    out = {"mode": mode, "rms": n, "experiment_s": experiment, "shutdown_s": shutdown,
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "failure": ec.failure}
    if mode == "prefect":
        outcome = recorder.outcome
        out.update(confirmed=outcome.confirmed, missing=outcome.missing,
                   ship_s=outcome.ship_seconds, confirm_s=outcome.confirm_seconds,
                   task_runs=len(recorder._shipper.expected), api_url=outcome.api_url)
    print("RESULT " + json.dumps(out))


def _run(mode: str, n: int, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--rms", str(n)],
                          env=env, capture_output=True, text=True, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} run failed:\n{proc.stdout}\n{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rms", type=int, default=1000)
    parser.add_argument("--child", choices=("engine", "prefect"))
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.rms)

    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if not env.get("PREFECT_API_URL"):
        env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="nepi-bench-prefect-home-")
    engine = _run("engine", args.rms, env)
    prefect = _run("prefect", args.rms, env)
    actions = 3 * args.rms   # deploy, start, stop (release is extra, and counted in the time)
    overhead = prefect["experiment_s"] - engine["experiment_s"]
    print(f"{args.rms} trivial RMs; deploy+start+stop+release = {prefect['task_runs']} task runs "
          f"(incl. the group barrier) on {prefect['api_url']}")
    for res in (engine, prefect):
        print(f"  {res['mode']:8s} experiment {res['experiment_s']:7.3f} s   "
              f"shutdown {res['shutdown_s']:7.3f} s   peak RSS {res['maxrss_mb']:7.1f} MB")
    print(f"  Prefect overhead during the experiment: {overhead:.3f} s = "
          f"{1000 * overhead / actions:.3f} ms per action (of {actions})")
    print(f"  record confirmed on the server {prefect['shutdown_s']:.3f} s after release "
          f"(confirmed={prefect['confirmed']}, missing={prefect['missing']}; "
          f"posting {prefect['ship_s']:.3f} s, read-back {prefect['confirm_s']:.3f} s)")


if __name__ == "__main__":
    main()

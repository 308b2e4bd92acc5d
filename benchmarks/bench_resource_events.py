"""What the record's nepi.* events and story logs cost (issue 10, items 5 and 6).

    python benchmarks/bench_resource_events.py --api-url http://127.0.0.1:PORT/api [--rms 1000]

Runs N trivial RMs (deploy, start, finish by itself with a metric, release) recorded
into the given Prefect API with ``NEPI_PREFECT_RESOURCE_EVENTS`` none, failures and all,
each in a fresh process, and prints per run: the experiment's wall time (deploy to the end of
shutdown, which waits until the server accepted the record; "ran": until every RM
finished), the events and log records journaled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, os, sys, time
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.resource import ResourceFactory, ResourceManager, clsinit_copy
from nepi_prefect.orchestration.recorder import PrefectRecorder

@clsinit_copy
class Quick(ResourceManager):
    _rtype = "BenchQuick"
    def do_start(self):
        super().do_start()
        self._metrics.update(rtt_ms=1.0)
        self.set_finished()

ResourceFactory.register_type(Quick)
n = int(sys.argv[1])
recorder = PrefectRecorder(timeout=600)
ec = ExperimentController(exp_id="bench-events", local_dir=sys.argv[2], recorder=recorder)
guids = [ec.register_resource("BenchQuick") for _ in range(n)]
started = time.perf_counter()
ec.deploy()
ec.wait_finished(guids, timeout=600)
ran = time.perf_counter() - started
ec.shutdown()
wall = time.perf_counter() - started
pipeline = recorder._pipeline
print(json.dumps({"wall_s": round(wall, 2), "ran_s": round(ran, 2), "events": pipeline.delivery.n_events,
                  "logs": pipeline.delivery.n_logs, "delivered": recorder.delivered}))
"""


def run(api_url: str, rms: int, events: str) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "NEPI_PREFECT_RESOURCE_EVENTS": events,
           "NEPI_PREFECT_RECORD_TIMEOUT": "600"}
    with tempfile.TemporaryDirectory(prefix="nepi-bench-events-") as tmp:
        done = subprocess.run([sys.executable, "-c", CHILD, str(rms), tmp], env=env,
                              capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True, help="a running Prefect API")
    parser.add_argument("--rms", type=int, default=1000)
    parser.add_argument("--modes", default="none,failures,all",
                        help="the NEPI_PREFECT_RESOURCE_EVENTS values to run, in order")
    args = parser.parse_args()
    for events in args.modes.split(","):
        result = run(args.api_url, args.rms, events)
        print(f"{args.rms} RMs, resource events {events}: "
              f"ran {result['ran_s']} s, {result['wall_s']} s to the end of shutdown (record delivered: "
              f"{result['delivered']}), {result['events']} events, {result['logs']} log records")


if __name__ == "__main__":
    main()

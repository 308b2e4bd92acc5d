"""Engine-only speed: N trivial RMs from deploy to FINISHED and released (no SSH, no Prefect).

Targets (issue 2): 1000 RMs in under 2 s of wall time; 10,000 RMs with peak
memory under 1 GiB; a wait() returns within 50 ms of the state change it waits for.
Issue 8 (the engine split) must not slow it: 1000 RMs deploy -> RELEASED at or
under the figure before the split, wait() wake-up median under 1 ms.

Each size runs ``REPEAT`` times (the machine is shared, single runs are noisy);
the median and the best are printed. Run: ``python benchmarks/bench_engine.py [N ...]``
(``BENCH_REPEAT=5`` by default).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import threading
import time

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import (
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)


@clsinit_copy
class BenchTrivial(ResourceManager):
    """Finishes as soon as it starts."""

    _rtype = "BenchTrivial"

    def do_start(self):
        super().do_start()
        self.set_finished()


def run(count: int) -> tuple[float, float]:
    """Seconds from deploy to all RELEASED, and seconds to FINISHED."""
    ec = ExperimentController(exp_id=f"bench-engine-{count}", recorder=Recorder(),
                              local_dir=tempfile.mkdtemp(prefix="nepi-bench-"))
    guids = [ec.register_resource("BenchTrivial") for _ in range(count)]
    started = time.perf_counter()
    ec.deploy()
    ec.wait_finished(guids)
    finished = time.perf_counter() - started
    ec.shutdown()
    return time.perf_counter() - started, finished


def wake_latency(samples: int = 200) -> list[float]:
    """Seconds from an RM's state change to the return of a wait() on it."""
    ec = ExperimentController(exp_id="bench-wake", recorder=Recorder(),
                              local_dir=tempfile.mkdtemp(prefix="nepi-bench-"))
    latencies = []
    try:
        for _ in range(samples):
            guid = ec.register_resource("BenchTrivial")
            rm = ec.get_resource(guid)
            woke = threading.Event()
            waiter = threading.Thread(target=lambda: (ec.wait([guid], [ResourceState.READY]),
                                                      woke.set()))
            waiter.start()
            time.sleep(0.002)  # let the waiter block
            changed = time.perf_counter()
            rm.set_ready()
            woke.wait(5)
            latencies.append(time.perf_counter() - changed)
            waiter.join()
    finally:
        ec.shutdown()
    return sorted(latencies)


def main(counts: list[int], repeat: int) -> None:
    ResourceFactory.register_type(BenchTrivial)
    for count in counts:
        runs = [run(count) for _ in range(repeat if count <= 1000 else 1)]
        total = statistics.median(t for t, _ in runs)
        finished = statistics.median(f for _, f in runs)
        best = min(t for t, _ in runs)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"engine  {count:>6} RMs  deploy->FINISHED {finished:6.2f} s  "
              f"deploy->RELEASED {total:6.2f} s (best {best:.2f} s, median of {len(runs)})  "
              f"peak RSS {peak_mib:7.1f} MiB")
    lat = wake_latency()
    print(f"wait() wake-up after a state change: median {lat[len(lat) // 2] * 1e3:.2f} ms, "
          f"max {lat[-1] * 1e3:.2f} ms over {len(lat)} waits (target < 50 ms)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10000], int(os.environ.get("BENCH_REPEAT", "5")))

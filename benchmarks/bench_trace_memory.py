"""Controller memory for an app that prints a lot: its stdout is collected to disk
through a real loopback sshd, each size in its own process (tests/fixtures/bigtrace.py).

    python benchmarks/bench_trace_memory.py [--sizes 10 50 200]   (MiB)

Target (issue 11): for 50 MiB, peak RSS < baseline + 50 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fixtures.bigtrace import run_bigtrace  # noqa: E402
from tests.fixtures.sshd import start_sshd  # noqa: E402

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    args = parser.parse_args()
    server = start_sshd()
    try:
        print(f"{'stdout MiB':>10} {'baseline MiB':>12} {'peak MiB':>9} {'delta MiB':>9} "
              f"{'seconds':>8}  state")
        for size in args.sizes:
            out = tempfile.mkdtemp(prefix="nepi-bench-trace-")
            try:
                r = run_bigtrace(server, size * MIB, out)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            ok = r["collected"] == size * MIB
            print(f"{size:>10} {r['baseline_rss'] / MIB:>12.1f} {r['peak_rss'] / MIB:>9.1f} "
                  f"{r['peak_delta'] / MIB:>9.1f} {r['seconds']:>8.1f}  {r['state']}"
                  f"{'' if ok else ' (trace incomplete!)'}")
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

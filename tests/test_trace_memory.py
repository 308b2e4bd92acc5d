"""Bounded memory: an app printing 50 MiB, collected through a real sshd, costs the
controller less than 50 MiB above its baseline (measured in a subprocess:
tests/fixtures/bigtrace.py; benchmarks/bench_trace_memory.py prints the figures)."""

from __future__ import annotations

import pytest

from tests.fixtures.bigtrace import run_bigtrace

pytestmark = pytest.mark.ssh
SIZE = 50 * 1024 * 1024


def test_fifty_mib_of_stdout_streams_to_disk(sshd, tmp_path):
    result = run_bigtrace(sshd, SIZE, str(tmp_path))
    print(f"\n{result}")
    assert result["state"] == "COMPLETED"
    assert result["collected"] == SIZE  # the whole trace, on disk
    assert result["peak_delta"] < 50 * 1024 * 1024, result

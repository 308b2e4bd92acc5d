"""Bounded memory: an app printing 50 MiB, collected through a real sshd, costs the
controller less than 50 MiB above its baseline (measured in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.sshd import SshServer

pytestmark = pytest.mark.ssh
SIZE = 50 * 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bigtrace(server: SshServer, size: int, outdir: str, timeout: float = 600) -> dict:
    """Run tests/fixtures/bigtrace.py in its own process; its JSON line."""
    argv = [sys.executable, "-m", "tests.fixtures.bigtrace", server.host, str(server.port),
            server.username, server.identity, server.known_hosts, str(size), outdir]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, NEPI_PREFECT_RECORDER="none"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fifty_mib_of_stdout_streams_to_disk(sshd, tmp_path):
    result = run_bigtrace(sshd, SIZE, str(tmp_path))
    print(f"\n{result}")
    assert result["state"] == "COMPLETED"
    assert result["collected"] == SIZE  # the whole trace, on disk
    assert result["peak_delta"] < 50 * 1024 * 1024, result

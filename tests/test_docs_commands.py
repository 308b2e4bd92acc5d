"""Every runnable ``nepi-prefect`` command in the README and docs runs as written.

The commands are taken from the fenced bash/sh blocks; lines with placeholders
(``DESCRIPTION``, ``[EXP_ID]``, ...) are synopses, not commands, and are skipped.
They run against a local server of their own (a fresh PREFECT_HOME, a free port).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.prefect_api import nepi_cli

# many real runs and sweeps, on a possibly saturated machine
pytestmark = [pytest.mark.prefect, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.S | re.M)
PLACEHOLDER = re.compile(r"\[|\b[A-Z][A-Z_]{2,}\b")


def commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                line = line.split("  #")[0].strip()
                # a sweep on a work pool needs workers serving it: tests/test_campaign_pool.py
                if "--work-pool" in line:
                    continue
                if line.startswith("nepi-prefect ") and not PLACEHOLDER.search(line):
                    found.append((doc.name, line))
    return found


def test_the_docs_have_runnable_commands():
    names = {line.split()[1] for _, line in commands()}
    assert {"run", "validate", "sweep", "server"} <= names


def test_every_documented_command_runs_as_written(local_home):
    failures = []
    for doc, line in commands():
        argv = nepi_cli() + shlex.split(line)[1:]
        done = subprocess.run(argv, env=local_home.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        # `server status` exits 3 (documented) when the server was just stopped
        ok = (0, 3) if line.startswith("nepi-prefect server status") else (0,)
        if done.returncode not in ok or "Traceback" in done.stdout + done.stderr:
            failures.append(f"{doc}: {line}: exit {done.returncode}\n{done.stdout[-1500:]}"
                            f"{done.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)

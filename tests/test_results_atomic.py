"""Results are written whole or not at all, and a failure to write them counts
(issue 11, deliverable 3): a full or read-only results directory (a small tmpfs
this test mounts) leaves no partial file, keeps what was collected, marks the
run INCOMPLETE with what was lost, and the CLI exits non-zero."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from nepi_prefect.cli import main
from nepi_prefect.execution import report
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from tests.faults import common as fault
from tests.helpers import wait_until

BIG = 200_000  # bytes of output: more than the 64 KiB tmpfs holds
SMALL_TEXT = "kept-output"


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    """A 64 KiB tmpfs of this test's own, unmounted afterwards."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def leftovers(root: Path) -> list[str]:
    """Temporary or partial files anywhere under ``root``."""
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part")]


def test_summary_write_is_atomic_and_a_failure_is_reported(tmpfs):
    run_dir = tmpfs / "exp" / "run"
    log = logging.getLogger("test")
    assert report.write_summary(str(run_dir), {"state": "COMPLETED", "resources": []}, log) is None
    before = (run_dir / "summary.json").read_text()
    # a summary larger than the filesystem: the old file stays whole, no temporary is left
    rows = [{"guid": i, "pad": "x" * 1000} for i in range(100)]
    lost = report.write_summary(str(run_dir), {"state": "COMPLETED", "resources": rows}, log)
    assert lost and "summary.json" in lost and "No space left" in lost
    assert (run_dir / "summary.json").read_text() == before
    assert leftovers(tmpfs) == []
    remount_read_only(tmpfs)
    lost = report.write_summary(str(run_dir), {"state": "COMPLETED", "resources": []}, log)
    assert lost and "Read-only file system" in lost
    assert (run_dir / "summary.json").read_text() == before


def test_a_full_results_dir_makes_the_run_incomplete(tmpfs, tmp_path):
    ec = ExperimentController(exp_id="full", local_dir=str(tmpfs), recorder=Recorder())
    node = ec.register_resource("LinuxNode")
    ec.set(node, "hostname", "localhost")
    ec.set(node, "home", str(tmp_path / "home"))
    small = fault.app_on(ec, node, f"echo {SMALL_TEXT}")
    big = fault.app_on(ec, node, f"head -c {BIG} /dev/zero | tr '\\0' x")
    ec.deploy()
    assert ec.wait_finished([small, big], timeout=120)
    # The small trace is collected first: collected at the same moment as the big one,
    # it would find the tmpfs filled by the big one's temporary file and be lost too.
    ec.release([fault.collector_of(ec, small)])
    ec.shutdown()
    summary = ec.summary()
    assert summary["state"] == "INCOMPLETE", summary
    assert ec.failure is None  # the experiment itself ran well; its results are incomplete
    assert any(f"LinuxApplication {big}" in line and "No space left" in line
               for line in summary["lost"]), summary["lost"]
    assert not any(f"LinuxApplication {small}" in line for line in summary["lost"])
    kept = Path(ec.run_dir) / f"LinuxApplication-{small}" / "stdout"
    assert kept.read_text().strip() == SMALL_TEXT  # what was collected stays
    on_disk = json.loads((Path(ec.run_dir) / "summary.json").read_text())
    assert on_disk["state"] == "INCOMPLETE" and on_disk["lost"] == summary["lost"]
    assert leftovers(tmpfs) == []


def local_app(exp_id: str, results: str, tmp_path: Path,
              command: str) -> tuple[ExperimentController, int, int]:
    """An EC with a localhost node (its home under ``tmp_path``) and one app on it."""
    ec = ExperimentController(exp_id=exp_id, local_dir=results, recorder=Recorder())
    node = ec.register_resource("LinuxNode")
    ec.set(node, "hostname", "localhost")
    ec.set(node, "home", str(tmp_path / "home"))
    app = ec.register_resource("LinuxApplication")
    ec.set(app, "command", command)
    ec.register_connection(app, node)
    return ec, node, app


def test_a_read_only_results_dir_loses_the_summary_and_says_so(tmpfs, tmp_path):
    ec, node, app = local_app("ro", str(tmpfs), tmp_path, "true")
    ec.deploy()
    assert ec.wait_finished(app, timeout=120)
    remount_read_only(tmpfs)
    ec.shutdown()
    summary = ec.summary()
    assert summary["state"] == "INCOMPLETE"
    assert any("summary.json" in line and "Read-only" in line for line in summary["lost"])


def test_cli_run_exits_non_zero_when_results_are_lost(tmpfs, tmp_path, capsys):
    desc = {
        "name": "cli-full",
        "resources": [
            {"name": "n", "rtype": "LinuxNode",
             "attributes": {"hostname": "localhost", "home": str(tmp_path / "home")}},
            {"name": "big", "rtype": "LinuxApplication",
             "attributes": {"command": f"head -c {BIG} /dev/zero | tr '\\0' x"},
             "collect": ["stdout"]},
        ],
        "connections": [["n", "big"]],
        "timeout": "2m",
    }
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(desc))
    code = main(["run", str(path), "--recorder", "none", "--results", str(tmpfs)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "lost:" in err and "No space left" in err and "INCOMPLETE" in err
    runs = list((tmpfs / "cli-full").iterdir())
    assert len(runs) == 1
    on_disk = json.loads((runs[0] / "summary.json").read_text())
    assert on_disk["state"] == "INCOMPLETE"
    assert leftovers(tmpfs) == []
    assert os.path.exists(runs[0] / "experiment.yaml")


def test_run_state_file_follows_the_run(tmp_path):
    """run-state.json is in the run directory while the run goes (hosts, paths,
    states) and holds the final states after shutdown."""
    ec, node, app = local_app("state", str(tmp_path / "r"), tmp_path, "sleep 60")
    path = Path(ec.run_dir) / "run-state.json"
    try:
        ec.deploy()
        assert ec.wait_started(app, timeout=120)

        def app_started() -> dict | None:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            rows = {r["guid"]: r for r in data["resources"]}
            return data if rows[app]["state"] == "STARTED" else None

        data = wait_until(app_started, timeout=30)
        rows = {r["guid"]: r for r in data["resources"]}
        assert data["exp_id"] == "state" and data["pid"] == os.getpid()
        assert data["ecstate"] == "RUNNING"
        assert rows[node]["hostname"] == "localhost"
        assert rows[node]["node_home"] == str(tmp_path / "home" / ".nepi-prefect")
        assert rows[app]["run_home"].startswith(rows[node]["node_home"])
        assert rows[app]["connections"] == [node] and rows[app]["rtype"] == "LinuxApplication"
    finally:
        ec.shutdown()
    data = json.loads(path.read_text())
    assert data["ecstate"] == "TERMINATED"
    assert {r["state"] for r in data["resources"]} == {"RELEASED"}
    assert leftovers(Path(ec.run_dir)) == []

"""The nepi-prefect command: inspection commands in-process, runs end to end as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nepi_prefect.cli import main

CLI = str(Path(sys.executable).with_name("nepi-prefect"))
ROOT = Path(__file__).resolve().parent.parent


def _run_cli(args: list[str], env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _summary(results: Path, exp_id: str) -> dict:
    (path,) = (results / exp_id).glob("*/summary.json")
    return json.loads(path.read_text())


# -- inspection -------------------------------------------------------------------------------------
def test_types_lists_the_resource_types(capsys):
    assert main(["types"]) == 0
    out = capsys.readouterr().out
    assert "LinuxNode" in out and "LinuxApplication" in out


def test_describe_shows_attributes_flags_and_traces(capsys):
    assert main(["describe", "LinuxNode"]) == 0
    out = capsys.readouterr().out
    for word in ("hostname", "password", "Credential", "INTEGER", "22", "1..65535"):
        assert word in out, word
    assert main(["describe", "LinuxApplication"]) == 0
    assert "stdout" in capsys.readouterr().out


def test_describe_an_unknown_type_lists_the_known_ones(capsys):
    assert main(["describe", "LinuxFridge"]) == 2
    err = capsys.readouterr().err
    assert "unknown resource type 'LinuxFridge'" in err and "LinuxNode" in err


def test_validate(capsys, tmp_path):
    assert main(["validate", str(ROOT / "examples/client_server.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  - {name: n, rtype: LinuxNode, attributes: {port: ssh}}\n")
    assert main(["validate", str(bad)]) == 2   # refused before anything ran
    err = capsys.readouterr().err
    assert "resources[0].attributes.port: got 'ssh'; expected an integer" in err.replace("\n", "")
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", str(ROOT / "examples/client_server.yaml"), "--set", "client"]) == 2
    assert "expected NAME.ATTR=VALUE" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "x.yaml", "--repeat", "0"])
    assert info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_results_lists_runs_and_traces(capsys, tmp_path):
    run = tmp_path / "exp-a" / "20260101000000000000"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "exp_id": "exp-a", "run_id": "20260101000000000000", "state": "FAILED",
        "failure": "critical resource LinuxPing 3 FAILED", "run_dir": str(run),
        "resources": [{"guid": 3, "rtype": "LinuxPing", "state": "FAILED", "metrics": {},
                       "traces": {"stdout": str(run / "ping.stdout")}}]}))
    assert main(["results", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "exp-a" in out and "FAILED" in out
    assert main(["results", "exp-a", "--results", str(tmp_path)]) == 0
    assert "ping.stdout" in capsys.readouterr().out.replace("\n", "")
    assert main(["results", "--json", "--results", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "FAILED"
    assert main(["results", "nope", "--results", str(tmp_path)]) == 1


# -- runs ----------------------------------------------------------------------------------------------
@pytest.mark.prefect
def test_run_client_server_example(prefect_server, tmp_path):
    proc = _run_cli(["run", "examples/client_server.yaml", "--results", str(tmp_path)],
                    prefect_server.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(tmp_path, "client-server")
    assert summary["state"] == "COMPLETED"
    states = {r["guid"]: r["state"] for r in summary["resources"]}
    assert states[2] == states[3] == "FINISHED"
    times = {r["guid"]: r["times"] for r in summary["resources"]}
    # the client started at least 1s after the server was STARTED
    from datetime import datetime
    gap = (datetime.fromisoformat(times[3]["start_time"])
           - datetime.fromisoformat(times[2]["start_time"])).total_seconds()
    assert gap >= 1.0
    assert "COMPLETED" in proc.stdout and "client" in proc.stdout
    # the server's output was collected into the run directory
    server = [r for r in summary["resources"] if r["guid"] == 2][0]
    assert Path(server["traces"]["stdout"]).read_text().strip() == "hello-from-client"
    # by default the run is recorded in Prefect: one flow run, named from exp_id and run_id
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    name = f"{summary['exp_id']}-{summary['run_id']}"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert len(runs) == 1 and runs[0].state.is_completed()


@pytest.mark.prefect
def test_run_ping_example(prefect_server, tmp_path):
    pytest.importorskip("nepi_prefect.resources.linux.ping")
    proc = _run_cli(["run", "examples/ping.yaml", "--set", "ping.count=2",
                     "--results", str(tmp_path)], prefect_server.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(tmp_path, "ping")
    (ping,) = [r for r in summary["resources"] if r["rtype"] == "LinuxPing"]
    assert ping["state"] == "FINISHED"
    assert ping["metrics"]["packet_loss_pct"] == 0 and ping["metrics"]["packets_sent"] == 2
    assert "packets transmitted" in Path(ping["traces"]["stdout"]).read_text()


@pytest.mark.prefect
def test_a_failing_experiment_exits_non_zero(prefect_server, tmp_path):
    desc = tmp_path / "fail.yaml"
    desc.write_text(textwrap.dedent("""
        name: failing
        resources:
          - {name: node, rtype: LinuxNode, attributes: {hostname: localhost}}
          - {name: app, rtype: LinuxApplication, attributes: {command: "exit 3"}}
        connections: [[node, app]]
    """))
    proc = _run_cli(["run", str(desc), "--results", str(tmp_path)], prefect_server.env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "experiment FAILED" in proc.stderr
    assert "app (LinuxApplication 2) failed: LinuxApplication 2: command exited with code 3" \
        in proc.stderr
    # the reason, not a traceback: that goes to the run's log
    assert "Traceback" not in proc.stdout + proc.stderr
    [log] = (tmp_path / "failing").glob("*/run.log")
    assert "command exited with code 3" in log.read_text()
    summary = _summary(tmp_path, "failing")
    assert summary["state"] == "FAILED" and "LinuxApplication 2" in summary["failure"]


def test_run_refuses_bad_input_with_exit_code_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  - {name: n, rtype: LinuxNode, attributes: {port: ssh}}\n")
    assert main(["run", str(bad), "--recorder", "none"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert main(["run", str(ROOT / "examples/ping.yaml"), "--recorder", "none",
                 "--set", "ping.nope=1"]) == 2
    assert "no attribute 'nope'" in capsys.readouterr().err


@pytest.mark.prefect
def test_sweep_file_from_the_cli(prefect_server, tmp_path):
    proc = _run_cli(["sweep", "examples/ping_sweep.yaml", "--repeat", "1",
                     "--results", str(tmp_path)], prefect_server.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": 4 runs" in proc.stdout
    # the parameter headers are whole, not cut to "ping.inter…"
    assert "ping.interval" in proc.stdout and "ping.packetSize" in proc.stdout
    (csv_path,) = (tmp_path / "campaigns").glob("ping-*/runs.csv")
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 5 and "ping.rtt_avg_ms" in lines[0] and lines[0].startswith("campaign,point,rep")
    assert len(list((tmp_path / "ping").glob("*/summary.json"))) == 4
    listed = _run_cli(["campaigns", "--results", str(tmp_path)], prefect_server.env)
    assert listed.returncode == 0 and csv_path.parent.name in listed.stdout
    again = _run_cli(["sweep", "examples/ping_sweep.yaml", "--repeat", "1",
                      "--results", str(tmp_path)], prefect_server.env)
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "ping").glob("*/summary.json"))) == 4  # resumed: nothing redone


def test_validate_a_sweep_file(capsys, tmp_path):
    assert main(["validate", str(ROOT / "examples/ping_sweep.yaml")]) == 0
    assert "valid sweep" in capsys.readouterr().out
    bad = tmp_path / "bad_sweep.yaml"
    bad.write_text(f"experiment: {ROOT / 'examples/ping.yaml'}\n"
                   "grid: {ping.count: [2, many], ping.colour: [red], pong.count: [1]}\n")
    assert main(["validate", str(bad)]) == 2  # bad input exits 2, like every refused description
    err = capsys.readouterr().err.replace("\n", " ")
    for part in ("ping.count", "'many'", "ping.colour", "pong"):
        assert part in err, part


def test_sweep_stop_rule_options_are_checked(capsys):
    assert main(["sweep", str(ROOT / "examples/ping_sweep.yaml"), "--ci-pct", "5"]) == 2
    assert "need --stop-metric" in capsys.readouterr().err
    assert main(["sweep", str(ROOT / "examples/ping_sweep.yaml"), "--stop-metric", "rtt"]) == 2
    assert "expected <resource>.<metric>" in capsys.readouterr().err


def test_sweep_needs_parameters(capsys):
    assert main(["sweep", str(ROOT / "examples/ping.yaml")]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
    assert main(["sweep", str(ROOT / "examples/ping.yaml"), "--param", "ping.count"]) == 2
    assert "NAME.ATTR=V1,V2" in capsys.readouterr().err

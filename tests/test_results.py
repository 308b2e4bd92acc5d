"""Run records on real runs: manifests, diff, rerun, queries and exports, plots."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import yaml

import nepi_prefect.spec.io  # noqa: F401  (lends the engine its description format: ec.save)
from nepi_prefect.cli import main
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.environment import file_sha256
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceFactory, clsinit_copy
from nepi_prefect.resources.linux.application import LinuxApplication
from nepi_prefect.results import campaign_warnings, diff_runs, load_manifest, runs_frame
from nepi_prefect.results.plot import attach_plot, plot_metric
from nepi_prefect.results.query import find_run, load_description_data
from tests.fixtures.prefect_api import wait_for_record
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
PING = str(ROOT / "examples" / "ping.yaml")


def _run(results: Path, *sets: str) -> Path:
    """Run examples/ping.yaml through the CLI; its run directory."""
    before = set((results / "ping").glob("*")) if (results / "ping").exists() else set()
    args = ["run", PING, "--recorder", "none", "--results", str(results)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    (new,) = set((results / "ping").glob("*")) - before - {results / "ping" / "plots"}
    return new


@pytest.fixture(scope="module")
def ping_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Four real ping runs: count 2 and 3, interval 0.2 and 0.3."""
    results = tmp_path_factory.mktemp("results")
    runs = [_run(results, f"ping.count={c}", f"ping.interval={i}")
            for c in (2, 3) for i in (0.2, 0.3)]
    return results, runs


def _proc(path: str) -> str:
    return Path(path).read_text().strip()


# -- the manifest ---------------------------------------------------------------------------------
@clsinit_copy
class FactfulApp(LinuxApplication):
    """An app whose type adds facts of its own, both ways the hook allows."""

    _rtype = "test::FactfulApp"

    def fact_commands(self) -> dict[str, str]:
        return {"kernel_name": "uname -s"}

    def facts(self) -> dict:
        return {"flavour": "tested"}


@pytest.mark.ssh
def test_manifest_from_the_loopback_ssh_host_holds_real_values(sshd, tmp_path, monkeypatch):
    monkeypatch.setitem(ResourceFactory._resource_types, FactfulApp.get_rtype(), FactfulApp)
    ec = ExperimentController(exp_id="manifest-ssh", recorder=Recorder(), local_dir=str(tmp_path))
    node = ec.register_resource("LinuxNode")
    for key, value in node_attrs(sshd).items():
        ec.set(node, key, value)
    app = ec.register_resource("test::FactfulApp")
    ec.set(app, "command", "iperf3 --version")
    ec.register_connection(node, app)
    try:
        ec.deploy()
        assert ec.wait_finished([app], timeout=120)
    finally:
        ec.shutdown()
    manifest = json.loads((Path(ec.run_dir) / "manifest.json").read_text())
    ctl = manifest["controller"]
    assert ctl["python"] == platform.python_version()
    assert ctl["prefect"] == metadata.version("prefect")
    assert ctl["nepi_prefect"] == metadata.version("nepi-prefect")
    saved = Path(ec.run_dir) / ctl["description"]["file"]
    assert ctl["description"]["sha256"] == file_sha256(str(saved))  # the Python-API run saved it
    host = manifest["resources"][str(node)]
    assert host["rtype"] == "LinuxNode"
    facts = host["facts"]
    # The sshd host is this machine: its facts must be this machine's.
    assert facts["kernel"] == platform.release()
    assert facts["cpu"]["count"] == os.cpu_count()
    assert facts["cpu"]["model"]
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert facts["memory_kb"] == int(meminfo["MemTotal"].split()[0])
    assert facts["distribution"] == platform.freedesktop_os_release()["PRETTY_NAME"]
    lo = facts["interfaces"]["lo"]
    assert lo["mtu"] == int(_proc("/sys/class/net/lo/mtu")) and "127.0.0.1/8" in lo["addresses"]
    assert lo["qdisc"]
    for name in ("net.ipv4.tcp_congestion_control", "net.core.rmem_max", "net.ipv4.tcp_rmem"):
        expected = " ".join(_proc("/proc/sys/" + name.replace(".", "/")).split())
        assert facts["sysctl"][name] == expected
    ping_v = subprocess.run(["ping", "-V"], capture_output=True, text=True).stdout.splitlines()[0]
    assert facts["tools"]["ping"] == ping_v.strip()
    assert facts["tools"]["iperf3"].startswith("iperf 3")   # the app's own command
    assert facts["clock"]["synchronized"] in ("yes", "no", "unknown")
    assert abs(facts["clock"]["offset_s"]) < 5   # same clock, give or take the round trip
    assert facts["extra"]["test::FactfulApp.kernel_name"] == "Linux"   # an RM type's command
    assert manifest["resources"][str(app)]["facts"] == {"flavour": "tested"}  # its facts()
    assert facts["collect_s"] > 0


def test_a_run_from_a_description_saves_it_and_its_manifest(ping_runs):
    _, runs = ping_runs
    run = runs[0]
    desc = load_description_data(run)
    assert desc["name"] == "ping" and {r["name"] for r in desc["resources"]} >= {"node1", "ping"}
    manifest = load_manifest(str(run))
    assert manifest["controller"]["description"] == {
        "file": "experiment.yaml", "sha256": file_sha256(str(run / "experiment.yaml"))}
    hosts = [r for r in manifest["resources"].values() if r["rtype"] == "LinuxNode"]
    assert len(hosts) == 2 and all(h["facts"]["kernel"] == platform.release() for h in hosts)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["manifest"]["run_id"] == summary["run_id"]


def test_campaign_warns_when_hosts_differ_in_what_matters(ping_runs):
    _, runs = ping_runs
    real = [(r.name, load_manifest(str(r)), None) for r in runs]
    assert campaign_warnings(real) == []   # same host, same everything
    changed = json.loads(json.dumps(real[1][1]))
    for res in changed["resources"].values():
        res["facts"]["kernel"] = "9.9.9-other"
        res["facts"]["sysctl"]["net.ipv4.tcp_congestion_control"] = "reno"
        res["facts"]["clock"]["epoch"] = 1.0   # volatile: never a warning
    warnings = campaign_warnings([real[0], ("other", changed, None)])
    assert len(warnings) == 4, warnings   # 2 nodes x (kernel, congestion control)
    assert any("kernel" in w and "9.9.9-other" in w and "other" in w for w in warnings)


# -- diff -----------------------------------------------------------------------------------------
def test_diff_of_two_runs_that_differ_in_one_attribute_shows_exactly_that(ping_runs, capsys):
    results, runs = ping_runs
    a, b = runs[0], runs[2]   # count 2 vs 3, same interval
    diff = diff_runs(a, b)
    assert diff["attributes"] == [{"key": "ping.count", "a": 2, "b": 3}]
    assert diff["description"] == [] and diff["environment"] == [] and diff["missing"] == []
    sent = {r["key"]: r for r in diff["metrics"]}["ping.packets_sent"]
    assert (sent["a"], sent["b"], sent["delta"]) == (2, 3, 1)
    assert main(["diff", f"ping/{a.name}", b.name, "--results", str(results), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attributes"] == diff["attributes"]
    assert main(["diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "ping.count" in text and "ping.interval" not in text and "environment: same" in text
    assert main(["diff", "nope/123", str(b)]) == 2
    assert "no run 'nope/123'" in capsys.readouterr().err


# -- rerun ----------------------------------------------------------------------------------------
def test_rerun_reproduces_the_attribute_values_and_links_the_runs(ping_runs, capsys):
    results, runs = ping_runs
    old = runs[1]
    assert main(["rerun", str(old), "--recorder", "none", "--results", str(results)]) == 0
    new = Path(capsys.readouterr().out.split("results: ")[-1].split()[0])
    assert new != old and new.parent == old.parent
    assert json.loads((new / "summary.json").read_text())["rerun_of"] == str(old)
    assert diff_runs(old, new)["attributes"] == []
    frame = runs_frame(str(results), where={"ping.count": 2, "ping.interval": 0.3})
    assert set(frame["run_dir"]) == {str(old), str(new)}
    assert frame.set_index("run_dir").loc[str(new), "rerun_of"] == str(old)
    # --set overrides as in run
    assert main(["rerun", str(new), "--set", "ping.count=4", "--recorder", "none",
                 "--results", str(results)]) == 0
    newer = Path(capsys.readouterr().out.split("results: ")[-1].split()[0])
    assert diff_runs(old, newer)["attributes"] == [{"key": "ping.count", "a": 2, "b": 4}]
    shutil.rmtree(new), shutil.rmtree(newer)   # keep the module's four runs for the others


def test_rerun_resolves_secrets_again_and_never_stores_them(tmp_path, monkeypatch, capsys):
    desc = yaml.safe_load(Path(PING).read_text())
    desc["resources"][0]["attributes"]["password"] = {"env": "I13_TEST_PASSWORD"}
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(desc))
    monkeypatch.setenv("I13_TEST_PASSWORD", "s3cr3t-value")
    results = tmp_path / "results"
    assert main(["run", str(path), "--recorder", "none", "--results", str(results)]) == 0
    (old,) = (results / "ping").glob("*")
    for name in ("experiment.yaml", "summary.json", "manifest.json"):
        assert "s3cr3t-value" not in (old / name).read_text()
    saved = load_description_data(old)
    variable = saved["resources"][0]["attributes"]["password"]["env"]
    capsys.readouterr()
    assert main(["rerun", str(old), "--recorder", "none", "--results", str(results)]) == 2  # refused before it starts
    assert f"environment variable {variable} is not set" in capsys.readouterr().err.replace("\n", "")
    monkeypatch.setenv(variable, "s3cr3t-value")
    assert main(["rerun", str(old), "--recorder", "none", "--results", str(results)]) == 0


# -- query and export -----------------------------------------------------------------------------
def test_results_filters_and_exports(ping_runs, tmp_path, capsys):
    results, runs = ping_runs
    frame = runs_frame(str(results), experiment="ping")
    assert len(frame) == 4
    assert {"ping.count", "ping.interval", "node1.hostname"} <= set(frame.attrs["parameters"])
    assert "ping.rtt_avg_ms" in frame.attrs["metrics"]
    assert pd.api.types.is_numeric_dtype(frame["ping.rtt_avg_ms"])
    assert sorted(runs_frame(str(results), where=["ping.count=3"])["run_dir"]) == \
        sorted(str(r) for r in runs[2:])
    assert runs_frame(str(results), state="FAILED").empty
    assert len(runs_frame(str(results), since="1h")) == 4 and runs_frame(str(results), until="1h").empty
    out = tmp_path / "runs.parquet"
    assert main(["results", "--results", str(results), "--where", "ping.interval=0.2",
                 "--format", "parquet", "--out", str(out)]) == 0
    back = pd.read_parquet(out)
    assert sorted(back["run_id"]) == sorted(r.name for r in (runs[0], runs[2]))
    assert list(back["ping.count"]) == [2, 3]
    capsys.readouterr()
    assert main(["results", "--results", str(results), "--format", "csv", "--state", "completed"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].startswith("exp_id,run_id,time,state")
    assert len(csv_text.strip().splitlines()) == 5
    assert main(["results", "--results", str(results), "--since", "yesterday-ish"]) == 2
    assert "expected an ISO date/time" in capsys.readouterr().err
    assert main(["results", "--results", str(results), "--format", "parquet"]) == 2
    assert find_run(runs[0].name, str(results)) == runs[0]


# -- plots ----------------------------------------------------------------------------------------
def test_plot_writes_a_valid_image_of_the_expected_size(ping_runs, tmp_path, capsys):
    results, runs = ping_runs
    assert main(["plot", "ping", "--x", "ping.interval", "--y", "ping.rtt_avg_ms",
                 "--hue", "ping.count", "--results", str(results)]) == 0
    path = Path(capsys.readouterr().out.split("plot: ")[1].split()[0])
    assert path.parent == results / "ping" / "plots"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 640)
    assert image[..., :3].std() > 0.05   # something is drawn
    svg = plot_metric(runs_frame(str(results)), "ping.count", "ping.packets_sent",
                      tmp_path / "sent.svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert main(["plot", "ping", "--x", "ping.nope", "--y", "ping.rtt_avg_ms",
                 "--results", str(results)]) == 2
    assert "no parameter 'ping.nope'" in capsys.readouterr().err


@pytest.mark.prefect
def test_plot_is_attached_to_prefect_as_a_markdown_artifact(ping_runs, prefect_server,
                                                            tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    results, _ = ping_runs
    path = plot_metric(runs_frame(str(results)), "ping.interval", "ping.rtt_avg_ms",
                       tmp_path / "p.png")
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    key = f"nepi-plot-test-{os.getpid()}"
    artifact_id = attach_plot(path, "ping rtt", key)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
    assert [str(a.id) for a in found] == [artifact_id]
    assert found[0].type == "markdown" and "data:image/png;base64," in found[0].data


def test_listing_a_campaign_warns_about_differing_environments(ping_runs, tmp_path, capsys):
    _, runs = ping_runs
    copy = tmp_path / "results" / "ping"
    for run in runs[:2]:
        shutil.copytree(run, copy / run.name)
    path = copy / runs[1].name / "manifest.json"
    manifest = json.loads(path.read_text())
    for res in manifest["resources"].values():
        if res["rtype"] == "LinuxNode":
            res["facts"]["tools"]["ping"] = "ping from iputils 19990101"
    path.write_text(json.dumps(manifest))
    assert main(["results", "ping", "--results", str(tmp_path / "results")]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    assert "warning" in err and "node1.tools.ping differs between runs" in err
    assert "19990101" in err and runs[1].name in err


def test_a_sweep_default_plot_picks_varying_parameters_and_a_metric(ping_runs, tmp_path):
    from nepi_prefect.results.plot import default_axes, default_plot
    from nepi_prefect.results.query import frame_of

    _, runs = ping_runs
    frame = frame_of(runs)
    assert default_axes(frame) == ("ping.count", "ping.rtt_avg_ms", "ping.interval")
    path = default_plot(frame, tmp_path)
    assert path.name == "ping.rtt_avg_ms-vs-ping.count-by-ping.interval.png"
    assert matplotlib.image.imread(path).shape[:2] == (400, 640)
    assert default_plot(frame_of(runs[:1]), tmp_path) is None   # one run: nothing varies


@pytest.mark.prefect
def test_the_manifest_reaches_the_prefect_record(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from nepi_prefect.orchestration.recorder import PrefectRecorder

    recorder = PrefectRecorder()
    ec = ExperimentController(exp_id=f"manifest-prefect-{os.getpid()}", recorder=recorder,
                              local_dir=str(tmp_path))
    node = ec.register_resource("LinuxNode")
    ec.set(node, "hostname", "localhost")
    try:
        ec.deploy()
        assert ec.wait_deployed([node], timeout=60)
    finally:
        ec.shutdown()
    with get_client(sync_client=True) as client:
        wait_for_record(client, recorder)
        (artifact,) = wait_until(lambda: [a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=[recorder.flow_run_id]))) if a.type == "table"], 120,
            "the summary table artifact on the server")
    assert "**Environment**" in artifact.description
    assert f"kernel {platform.release()}" in artifact.description
    assert f"Prefect {metadata.version('prefect')}" in artifact.description

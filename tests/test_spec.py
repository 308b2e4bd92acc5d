"""Experiment descriptions: round trips through save/load, and every validation error."""

from __future__ import annotations

import json
import textwrap

import pytest

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import (
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)
from nepi_prefect.execution.trace import Trace
from nepi_prefect.spec.io import (
    apply_overrides,
    describe_experiment,
    read_description,
    read_sweep,
    resource_names,
    sweep_points,
)
from nepi_prefect.spec.validate import DescriptionError


@clsinit_copy
class SpecHost(ResourceManager):
    _rtype = "SpecHost"

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("hostname", "host", flags=Flags.Design))
        cls._register_attribute(Attribute("password", "secret", flags=Flags.Credential))
        cls._register_attribute(Attribute("count", "n", type=Types.Integer, default=1,
                                          range=(1, 100)))
        cls._register_attribute(Attribute("mode", "m", type=Types.Enumerate,
                                          allowed=["a", "b"], default="a"))

    @classmethod
    def _register_traces(cls):
        cls._register_trace(Trace("stdout", "output"))


ResourceFactory.register_type(SpecHost)


@pytest.fixture
def ec_kwargs(tmp_path):
    return {"local_dir": str(tmp_path / "results"), "recorder": Recorder()}


def _write(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _build_by_api(ec_kwargs) -> ExperimentController:
    ec = ExperimentController(exp_id="roundtrip", **ec_kwargs)
    a = ec.register_resource("SpecHost")
    b = ec.register_resource("SpecHost", guid=7)
    c = ec.register_resource("SpecHost")
    ec.set(a, "hostname", "h1")
    ec.set(a, "password", "s3cret")
    ec.set(b, "count", 4)
    ec.set(c, "mode", "b")
    ec.enable_trace(b, "stdout")
    ec.register_connection(a, b)
    ec.register_connection(a, c)
    ec.register_condition([b, c], ResourceAction.START, a, ResourceState.STARTED, "1s")
    ec.register_condition(c, ResourceAction.STOP, b, ResourceState.FINISHED)
    return ec


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_of_an_api_built_experiment(tmp_path, ec_kwargs, monkeypatch, suffix):
    ec = _build_by_api(ec_kwargs)
    path = ec.save(str(tmp_path / f"saved{suffix}"))
    text = open(path).read()
    assert "s3cret" not in text  # credentials are never written in clear
    assert "NEPI_PREFECT_SPECHOST_1_PASSWORD" in text
    monkeypatch.setenv("NEPI_PREFECT_SPECHOST_1_PASSWORD", "s3cret")
    ec2 = ExperimentController.load(path, **ec_kwargs)
    try:
        assert ec2.exp_id == "roundtrip"
        assert ec2.resources == [1, 7, 8]
        assert ec2.get(1, "password") == "s3cret"
        assert ec2.get(7, "count") == 4 and ec2.get(8, "mode") == "b"
        assert ec2.get_resource(7).enabled_traces == {"stdout"}
        assert ec2.get_resource(1).connections == {7, 8}
        assert ec2.get_resource(8).conditions == {
            ResourceAction.START: [([1], ResourceState.STARTED, "1s")],
            ResourceAction.STOP: [([7], ResourceState.FINISHED, None)]}
        assert describe_experiment(ec2)[0] == describe_experiment(ec)[0]
    finally:
        ec.shutdown()
        ec2.shutdown()


def test_a_saved_credential_needs_its_variable(tmp_path, ec_kwargs, monkeypatch):
    ec = _build_by_api(ec_kwargs)
    path = ec.save(str(tmp_path / "saved.yaml"))
    ec.shutdown()
    monkeypatch.delenv("NEPI_PREFECT_SPECHOST_1_PASSWORD", raising=False)
    with pytest.raises(DescriptionError, match=r"resources\[0\]\.attributes\.password: "
                                               r"environment variable NEPI_PREFECT_SPECHOST_1_PASSWORD"):
        ExperimentController.load(path, **ec_kwargs)


def test_names_from_the_description_are_kept(tmp_path, ec_kwargs):
    path = _write(tmp_path, """
        name: named
        resources:
          - {name: server, rtype: SpecHost}
          - {name: client, rtype: SpecHost, attributes: {count: "3"}}
        connections: [[server, client]]
        conditions:
          - {resources: client, wait_for: server, state: started, time: 500ms}
    """)
    ec = ExperimentController.load(str(path), **ec_kwargs)
    try:
        assert resource_names(ec) == {1: "server", 2: "client"}
        assert ec.get(2, "count") == 3
        saved = ec.save(str(tmp_path / "again.yaml"))
        assert read_description(saved).names == ["server", "client"]
    finally:
        ec.shutdown()


BASE = """\
resources:
  - {name: h1, rtype: SpecHost}
  - {name: h2, rtype: SpecHost}
  - {name: h3, rtype: SpecHost}
"""

CASES = [
    ("unknown rtype", "resources:\n  - {name: a, rtype: Bogus}\n",
     r"resources\[0\]\.rtype: unknown resource type 'Bogus'; expected one of .*SpecHost"),
    ("unknown attribute", BASE + "  - {name: x, rtype: SpecHost, attributes: {colour: red}}\n",
     r"resources\[3\]\.attributes\.colour: SpecHost has no attribute 'colour'; "
     r"expected one of its attributes \(count, critical, hostname, mode, password\)"),
    ("wrong type", BASE + "  - {name: x, rtype: SpecHost, attributes: {count: many}}\n",
     r"resources\[3\]\.attributes\.count: got 'many'; expected an integer"),
    ("out of range", BASE + "  - {name: x, rtype: SpecHost, attributes: {count: 500}}\n",
     r"resources\[3\]\.attributes\.count: got 500; expected a value between 1 and 100"),
    ("enum", BASE + "  - {name: x, rtype: SpecHost, attributes: {mode: z}}\n",
     r"resources\[3\]\.attributes\.mode: got 'z'; expected one of 'a', 'b'"),
    ("unknown trace", BASE + "  - {name: x, rtype: SpecHost, traces: [pcap]}\n",
     r"resources\[3\]\.traces\[0\]: SpecHost has no trace 'pcap'; expected one of its traces \(stdout\)"),
    ("unknown state", BASE + "conditions:\n  - {resources: h1, wait_for: h2, state: RUNNING}\n",
     r"conditions\[0\]\.state: unknown state 'RUNNING'; expected one of NEW, .*STARTED"),
    ("failed state", BASE + "conditions:\n  - {resources: h1, wait_for: h2, state: FAILED}\n",
     r"conditions\[0\]\.state: unknown state 'FAILED'"),
    ("unknown action", BASE + "conditions:\n  - {resources: h1, action: PAUSE, wait_for: h2}\n",
     r"conditions\[0\]\.action: unknown action 'PAUSE'; expected one of START, STOP"),
    ("condition names", BASE + "conditions:\n  - {resources: h1, wait_for: [h2, ghost]}\n",
     r"conditions\[0\]\.wait_for\[1\]: undeclared resource 'ghost'; expected a declared "
     r"resource name \(h1, h2, h3\)"),
    ("connection names", BASE + "connections: [[h1, nowhere]]\n",
     r"connections\[0\]\[1\]: undeclared resource 'nowhere'"),
    ("connection shape", BASE + "connections: [[h1, h2, h3]]\n",
     r"connections\[0\]: got \['h1', 'h2', 'h3'\]; expected a pair of resource names"),
    ("malformed time", BASE + "conditions:\n  - {resources: h1, wait_for: h2, time: soon}\n",
     r"conditions\[0\]\.time: malformed time 'soon'; expected a relative time such as \"0s\""),
    ("malformed timeout", BASE + "timeout: 5 minutes\n",
     r"timeout: malformed time '5 minutes'"),
    ("unknown field", BASE + "conditons: []\n",
     r"conditons: unknown field 'conditons'; expected one of name, description, resources"),
    ("resource field", "resources:\n  - {name: a, rtype: SpecHost, atributes: {}}\n",
     r"resources\[0\]\.atributes: unknown field 'atributes'; expected one of name, rtype"),
    ("missing rtype", "resources:\n  - {name: a}\n",
     r"resources\[0\]\.rtype: nothing; expected this field to be given"),
    ("duplicate name", "resources:\n  - {name: a, rtype: SpecHost}\n  - {name: a, rtype: SpecHost}\n",
     r"resources\[1\]\.name: duplicate name 'a'"),
    ("bad name", "resources:\n  - {name: a.b, rtype: SpecHost}\n",
     r"resources\[0\]\.name: got 'a.b'; expected a resource name is a non-empty word"),
    ("wait_for", BASE + "wait_for: [h9]\n", r"wait_for\[0\]: undeclared resource 'h9'"),
    ("not a mapping", "- just\n- a list\n", r"got list; expected a mapping"),
    ("bad yaml", "resources: [\n", r"line \d+, column \d+: unreadable YAML/JSON"),
]


@pytest.mark.parametrize("case, text, message", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_name_file_path_found_and_expected(tmp_path, case, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(DescriptionError) as info:
        read_description(path)
    assert str(path) in str(info.value)
    assert any(__import__("re").search(message, line) for line in str(info.value).splitlines()), \
        str(info.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, BASE + "connections: [[h1, zz]]\nconditions:\n"
                  "  - {resources: h1, action: GO, wait_for: h2, state: NOPE, time: 1x}\n")
    with pytest.raises(DescriptionError) as info:
        read_description(path)
    paths = [issue.path for issue in info.value.issues]
    assert paths == ["connections[0][1]", "conditions[0].action", "conditions[0].state",
                     "conditions[0].time"]


def test_json_descriptions_and_overrides(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"resources": [{"name": "h", "rtype": "SpecHost"}]}))
    desc = read_description(path)
    new = apply_overrides(desc, ["h.count=9", "h.hostname=10.0.0.1"])
    assert new.resource("h").attributes == {"count": "9", "hostname": "10.0.0.1"}
    assert desc.resource("h").attributes == {}  # the original is untouched
    with pytest.raises(DescriptionError, match=r"--set h\.count: got 'x'; expected an integer"):
        apply_overrides(desc, ["h.count=x"])
    with pytest.raises(DescriptionError, match=r"--set ghost\.count: undeclared resource 'ghost'"):
        apply_overrides(desc, {"ghost.count": 1})


def test_sweep_file_grid_and_points(tmp_path):
    _write(tmp_path, "resources:\n  - {name: h, rtype: SpecHost}\n", "exp.yaml")
    path = _write(tmp_path, """
        experiment: exp.yaml
        grid: {h.count: [1, 2], h.mode: [a, b]}
        points: [{h.count: 50}]
        repeat: 2
    """, "sweep.yaml")
    sweep, desc = read_sweep(path)
    assert desc.names == ["h"] and sweep.repeat == 2
    assert sweep_points(sweep) == [
        {"h.count": 1, "h.mode": "a"}, {"h.count": 1, "h.mode": "b"},
        {"h.count": 2, "h.mode": "a"}, {"h.count": 2, "h.mode": "b"}, {"h.count": 50}]
    bad = _write(tmp_path, "experiment: exp.yaml\ngrid: {h.count: [1, 500]}\n", "bad.yaml")
    with pytest.raises(DescriptionError, match=r"grid\.h\.count\[1\] h\.count: got 500"):
        read_sweep(bad)


@pytest.mark.parametrize("example", ["ping.yaml", "client_server.yaml"])
def test_examples_are_valid(example):
    pytest.importorskip("nepi_prefect.resources.linux.ping")
    desc = read_description(f"examples/{example}")
    assert desc.resources


def test_collect_adds_collectors_and_saves_back_as_collect(tmp_path, ec_kwargs):
    pytest.importorskip("nepi_prefect.resources.all.collector")
    path = _write(tmp_path, """
        resources:
          - {name: h, rtype: SpecHost, collect: [stdout]}
    """)
    ec = ExperimentController.load(str(path), **ec_kwargs)
    try:
        assert [ec.get_resource(g).get_rtype() for g in ec.resources] == ["SpecHost", "Collector"]
        assert ec.get(2, "traceName") == "stdout" and ec.get_resource(2).connections == {1}
        saved = read_description(ec.save(str(tmp_path / "saved.yaml")))
        assert [(r.name, r.collect) for r in saved.resources] == [("h", ["stdout"])]
    finally:
        ec.shutdown()


def test_the_run_waits_for_what_finishes_by_itself():
    from nepi_prefect.execution.recording import Recorder
    from nepi_prefect.spec.run import wait_set

    ec = ExperimentController(recorder=Recorder())
    try:
        guids = {rtype: ec.register_resource(rtype)
                 for rtype in ("LinuxNode", "LinuxPing", "LinuxApplication", "LinuxTcpdump",
                               "Collector", "SpecHost")}
        assert sorted(wait_set(ec)) == sorted([guids["LinuxPing"], guids["LinuxApplication"]])
    finally:
        ec.shutdown()

"""Every resource has a human name: given at register_resource (a description's
names), else <rtype>-<guid>; the summary rows carry it."""

from __future__ import annotations

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import InvalidInputError, UnknownResourceError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.spec.io import build_experiment, read_description
from tests.helpers import RunsRecorder
from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)


@pytest.fixture
def ec(tmp_path):
    ec = ExperimentController(exp_id="names", local_dir=str(tmp_path), recorder=Recorder())
    yield ec
    ec.shutdown()


def test_names_given_or_by_default(ec):
    node = ec.register_resource("LinuxNode")          # the NEPI call, unchanged
    app = ec.register_resource("LinuxApplication", name="client")
    assert ec.get_name(node) == "LinuxNode-1" and ec.get_name(app) == "client"
    assert ec.get_guid("client") == app and ec.get_guid("LinuxNode-1") == node
    assert ec.get_resource(app).name == "client"
    rows = {r["guid"]: r for r in ec.summary()["resources"]}
    assert rows[node]["name"] == "LinuxNode-1" and rows[app]["name"] == "client"


def test_bad_or_taken_names_are_refused_at_the_call(ec):
    ec.register_resource("LinuxNode", name="server")
    with pytest.raises(InvalidInputError, match="'server' is already taken by guid 1"):
        ec.register_resource("LinuxNode", name="server")
    for bad in ("", " padded ", 7):
        with pytest.raises(InvalidInputError, match="a resource name is a non-empty string"):
            ec.register_resource("LinuxNode", name=bad)
    ec.register_resource("LinuxNode", name="LinuxNode-3")
    with pytest.raises(InvalidInputError, match="give this one a name"):
        ec.register_resource("LinuxNode", guid=3)  # its default name is taken
    with pytest.raises(UnknownResourceError, match="no resource named 'nobody'"):
        ec.get_guid("nobody")
    assert ec.resources == [1, 2]  # nothing half-registered


def test_a_description_names_its_resources_and_collectors(tmp_path):
    ec = build_experiment(read_description("examples/ping.yaml"), local_dir=str(tmp_path),
                          recorder=Recorder())
    try:
        names = {ec.get_name(g) for g in ec.resources}
        assert {"node1", "node2", "ping", "ping-collect-stdout"} == names
        assert {r["name"] for r in ec.summary()["resources"]} == names
    finally:
        ec.shutdown()


def test_action_runs_are_named_after_the_resource(tmp_path, engine_types):
    rec = RunsRecorder()
    ec = ExperimentController(exp_id="names-runs", local_dir=str(tmp_path), recorder=rec)
    try:
        named = ec.register_resource("TestTrivial", name="alpha")
        plain = ec.register_resource("TestTrivial")
        ec.deploy()
        ec.wait_started([named, plain], timeout=60)
    finally:
        ec.shutdown()
    names = {r.name for r in rec.runs.values()}
    assert {"deploy-alpha", "start-alpha", "release-alpha"} <= names
    assert {f"deploy-TestTrivial-{plain}", f"start-TestTrivial-{plain}"} <= names
    assert all(r.resource_name == "alpha" for r in rec.runs.values()
               if r.guid == named and r.kind != "barrier")

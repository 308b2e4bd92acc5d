"""Bad input is refused at the call that gave it (issue 11, deliverable 6).

One table per entry point: the Python API, a YAML description (``spec``) and
the CLI (``nepi-prefect validate``/``run`` exit with 2). Each row asserts the
error type and that the message names the offending value.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import yaml

from nepi_prefect.cli import main
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import (
    AttributeValueError,
    ExperimentStateError,
    InvalidInputError,
)
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.states import ResourceAction, ResourceState
from nepi_prefect.spec.io import description_from_data
from nepi_prefect.spec.validate import DescriptionError

START, STOP = ResourceAction.START, ResourceAction.STOP
STARTED, STOPPED, FINISHED = ResourceState.STARTED, ResourceState.STOPPED, ResourceState.FINISHED


@pytest.fixture
def ec(tmp_path):
    controller = ExperimentController(exp_id="bad-inputs", local_dir=str(tmp_path),
                                      recorder=Recorder())
    yield controller
    controller.shutdown()


def node(ec: ExperimentController, host: str = "localhost") -> int:
    guid = ec.register_resource("LinuxNode")
    ec.set(guid, "hostname", host)
    return guid


def app(ec: ExperimentController, rtype: str = "LinuxApplication") -> int:
    return ec.register_resource(rtype)


def ring(ec: ExperimentController, n: int, action=START, state=STARTED) -> list[int]:
    guids = [app(ec) for _ in range(n)]
    for i, g in enumerate(guids[:-1]):
        ec.register_condition(g, action, guids[i + 1], state)
    ec.register_condition(guids[-1], action, guids[0], state)
    return guids


def shut(ec: ExperimentController) -> ExperimentController:
    ec.shutdown()
    return ec


def slipped_cycle(ec: ExperimentController) -> None:
    """A cycle made on the RMs directly (NEPI style), past register_condition."""
    a, b = app(ec), app(ec)
    ec.get_resource(a).register_condition(START, b, STARTED)
    ec.get_resource(b).register_condition(START, a, STARTED)
    ec.deploy()


def missing_two(ec: ExperimentController) -> None:
    n = node(ec)
    for rtype in ("LinuxPing", "LinuxTraceroute"):
        ec.register_connection(n, app(ec, rtype))
    ec.deploy()


def on_two_nodes(ec: ExperimentController) -> None:
    a = app(ec)
    ec.register_connection(a, node(ec))
    ec.register_connection(a, node(ec))


def after_shutdown(call: Callable[[ExperimentController], Any]) -> Callable:
    def run(ec: ExperimentController) -> Any:
        guid = app(ec)
        return call(shut(ec), guid)
    return run


def new_ec(**kwargs: Any) -> Callable:
    return lambda ec: ExperimentController(recorder=Recorder(), local_dir=ec.local_dir, **kwargs)


# (id, call on a fresh EC, error type, text the message must hold)
API_CASES = [
    ("self-start-started", lambda ec: ec.register_condition(1, START, 1, STARTED) if app(ec) else 0,
     InvalidInputError, "START of 1 waits for 1 STARTED"),
    ("self-start-finished", lambda ec: ec.register_condition(app(ec), START, 1, FINISHED),
     InvalidInputError, "waits for 1 FINISHED"),
    ("self-start-stopped", lambda ec: ec.register_condition(app(ec), START, 1, STOPPED),
     InvalidInputError, "waits for 1 STOPPED"),
    ("self-stop-stopped", lambda ec: ec.register_condition(app(ec), STOP, 1, STOPPED),
     InvalidInputError, "STOP of 1 waits for 1 STOPPED"),
    ("pair-start", lambda ec: ring(ec, 2), InvalidInputError, "START of 2 waits for 1 STARTED"),
    ("pair-stop", lambda ec: ring(ec, 2, STOP, STOPPED), InvalidInputError,
     "STOP of 2 waits for 1 STOPPED"),
    ("ring-3", lambda ec: ring(ec, 3), InvalidInputError, "START of 3 waits for 1 STARTED"),
    ("ring-5-finished", lambda ec: ring(ec, 5, START, FINISHED), InvalidInputError,
     "waits for 1 FINISHED"),
    ("start-waits-stop-of-waiter", lambda ec: (
        ec.register_condition(app(ec), START, app(ec), STOPPED),
        ec.register_condition(2, STOP, 1, STARTED)), InvalidInputError, "STOP of 2 waits for 1"),
    ("group-with-self", lambda ec: ec.register_condition([app(ec), app(ec)], START, [2], STARTED),
     InvalidInputError, "START of 2 waits for 2 STARTED"),
    ("cycle-slipped-to-deploy", slipped_cycle, InvalidInputError, "deploy: conditions"),
    ("app-to-app", lambda ec: ec.register_connection(app(ec), app(ec)), InvalidInputError,
     "LinuxApplication 1 cannot be connected to LinuxApplication 2"),
    ("ping-to-app", lambda ec: ec.register_connection(app(ec, "LinuxPing"), app(ec)),
     InvalidInputError, "LinuxPing 1 cannot be connected to LinuxApplication 2"),
    ("node-to-node", lambda ec: ec.register_connection(node(ec), node(ec)), InvalidInputError,
     "LinuxNode 1 cannot be connected to LinuxNode 2"),
    ("node-to-itself", lambda ec: ec.register_connection(node(ec), 1), InvalidInputError,
     "LinuxNode 1 cannot be connected to itself"),
    ("app-to-itself", lambda ec: ec.register_connection(app(ec), 1), InvalidInputError,
     "LinuxApplication 1 cannot be connected to itself"),
    ("app-on-two-nodes", on_two_nodes, InvalidInputError, "at most 1 LinuxNode"),
    ("hostname-int", lambda ec: ec.set(ec.register_resource("LinuxNode"), "hostname", 123),
     AttributeValueError, "got 123, expected a string"),
    ("hostname-float", lambda ec: ec.set(ec.register_resource("LinuxNode"), "hostname", 1.5),
     AttributeValueError, "'hostname': got 1.5"),
    ("username-bool", lambda ec: ec.set(ec.register_resource("LinuxNode"), "username", True),
     AttributeValueError, "'username': got True"),
    ("command-list", lambda ec: ec.set(app(ec), "command", ["ls"]), AttributeValueError,
     "got ['ls']"),
    ("home-command-substitution",
     lambda ec: ec.set(ec.register_resource("LinuxNode"), "home", "/tmp/$(touch x)"),
     AttributeValueError, "'home': got '/tmp/$(touch x)'"),
    ("home-relative", lambda ec: ec.set(ec.register_resource("LinuxNode"), "home", "data"),
     AttributeValueError, "'home': got 'data', expected an absolute path"),
    ("home-dotdot", lambda ec: ec.set(ec.register_resource("LinuxNode"), "home", "/tmp/../etc"),
     AttributeValueError, "got '/tmp/../etc'"),
    ("depends-not-a-package", lambda ec: ec.set(app(ec, "LinuxPing"), "depends", "curl;id"),
     AttributeValueError, "'curl;id' is not a package name"),
    ("port-word", lambda ec: ec.set(ec.register_resource("LinuxNode"), "port", "ssh"),
     AttributeValueError, "'port': got 'ssh', expected an integer"),
    ("port-range", lambda ec: ec.set(ec.register_resource("LinuxNode"), "port", 70000),
     AttributeValueError, "got 70000"),
    ("count-fraction", lambda ec: ec.set(app(ec, "LinuxPing"), "count", 1.5),
     AttributeValueError, "'count': got 1.5"),
    ("bool-word", lambda ec: ec.set(node(ec), "acceptUnknownHostKeys", "maybe"),
     AttributeValueError, "got 'maybe'"),
    ("env-unbalanced-double", lambda ec: ec.set(app(ec), "env", 'A="x'), InvalidInputError,
     "LinuxApplication 1: attribute 'env': 'A=\"x'"),
    ("env-unbalanced-single", lambda ec: ec.set(app(ec, "LinuxPing"), "env", "B='y"),
     InvalidInputError, "LinuxPing 1: attribute 'env': \"B='y\""),
    ("register-after-shutdown", lambda ec: shut(ec).register_resource("LinuxNode"),
     ExperimentStateError, "bad-inputs is shut down"),
    ("set-after-shutdown", after_shutdown(lambda ec, g: ec.set(g, "command", "ls")),
     ExperimentStateError, "cannot set an attribute"),
    ("connect-after-shutdown", after_shutdown(lambda ec, g: ec.register_connection(g, g)),
     ExperimentStateError, "cannot register a connection"),
    ("condition-after-shutdown",
     after_shutdown(lambda ec, g: ec.register_condition(g, START, g, STARTED)),
     ExperimentStateError, "cannot register a condition"),
    ("trace-after-shutdown", after_shutdown(lambda ec, g: ec.enable_trace(g, "stdout")),
     ExperimentStateError, "cannot enable a trace"),
    ("deploy-after-shutdown", after_shutdown(lambda ec, g: ec.deploy()),
     ExperimentStateError, "TERMINATED"),
    ("deploy-group-string", lambda ec: ec.deploy(group="abc"), InvalidInputError, "'abc'"),
    ("deploy-group-negative", lambda ec: ec.deploy(group=-1), InvalidInputError, "got -1"),
    ("deploy-guids-string", lambda ec: ec.deploy(guids="12"), InvalidInputError, "got '12'"),
    ("wait-string", lambda ec: ec.wait("abc"), InvalidInputError, "got 'abc'"),
    ("wait-finished-mixed", lambda ec: ec.wait_finished([app(ec), "x"]), InvalidInputError,
     "got 'x'"),
    ("wait-float", lambda ec: ec.wait(1.5), InvalidInputError, "got 1.5"),
    ("condition-group-string", lambda ec: ec.register_condition("ab", START, [app(ec)], STARTED),
     InvalidInputError, "got 'ab'"),
    ("release-string", lambda ec: ec.release("7"), InvalidInputError, "got '7'"),
    ("exp-id-empty", new_ec(exp_id=""), InvalidInputError, "exp_id '' is refused"),
    ("exp-id-dotdot", new_ec(exp_id="../../x"), InvalidInputError, "'../../x'"),
    ("exp-id-slash", new_ec(exp_id="a/b"), InvalidInputError, "'a/b'"),
    ("exp-id-newline", new_ec(exp_id="a\nb"), InvalidInputError, "'a\\nb'"),
    ("exp-id-dot-start", new_ec(exp_id=".hidden"), InvalidInputError, "'.hidden'"),
    ("exp-id-shell", new_ec(exp_id="e$(touch x)"), InvalidInputError, "'e$(touch x)'"),
    ("exp-id-int", new_ec(exp_id=5), InvalidInputError, "int 5"),
    ("run-id-dotdot", new_ec(run_id="../r"), InvalidInputError, "run_id '../r'"),
    ("run-id-semicolon", new_ec(run_id="r;rm"), InvalidInputError, "run_id 'r;rm'"),
    ("run-id-empty", new_ec(run_id=""), InvalidInputError, "run_id ''"),
    ("ping-without-target", lambda ec: (ec.register_connection(node(ec), app(ec, "LinuxPing")),
                                        ec.deploy()), InvalidInputError, "LinuxPing 2: 'target'"),
    ("traceroute-without-target",
     lambda ec: (ec.register_connection(node(ec), app(ec, "LinuxTraceroute")), ec.deploy()),
     InvalidInputError, "LinuxTraceroute 2: 'target'"),
    ("two-missing-named-at-once", missing_two, InvalidInputError, "LinuxTraceroute 3: 'target'"),
]


@pytest.mark.parametrize("call,error,text", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_api_refuses(ec, call, error, text):
    with pytest.raises(error) as info:
        call(ec)
    assert text in str(info.value), str(info.value)


def test_refusals_leave_nothing_half_done(ec):
    """A refused condition or connection is not kept; the next valid call works."""
    a, b, n = app(ec), app(ec), node(ec)
    ec.register_condition(a, START, b, STARTED)
    with pytest.raises(InvalidInputError):
        ec.register_condition(b, START, a, STARTED)
    assert START not in ec.get_resource(b).conditions
    ec.register_condition(b, STOP, a, STARTED)  # b stops after a started: no cycle
    ec.register_connection(a, n)
    with pytest.raises(InvalidInputError):
        ec.register_connection(a, node(ec))
    assert ec.get_resource(a).connections == {n}
    ec.register_connection(a, n)  # connecting again changes nothing


def test_two_missing_attributes_both_named(ec):
    with pytest.raises(InvalidInputError) as info:
        missing_two(ec)
    assert "LinuxPing 2: 'target'" in str(info.value)
    assert "LinuxTraceroute 3: 'target'" in str(info.value)
    assert all(ec.state(g) == ResourceState.NEW for g in ec.resources)


def test_exp_id_never_writes_outside_results(tmp_path):
    with pytest.raises(InvalidInputError):
        ExperimentController(exp_id="../../x", local_dir=str(tmp_path / "r"), recorder=Recorder())
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


# -- YAML descriptions ------------------------------------------------------------
NODE = {"name": "n", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}}
NODE2 = {"name": "m", "rtype": "LinuxNode", "attributes": {"hostname": "localhost"}}


def apps(*names: str, rtype: str = "LinuxApplication", **attrs: Any) -> list[dict]:
    return [{"name": n, "rtype": rtype, "attributes": {"command": "true", **attrs}}
            for n in names]


def doc(resources: list[dict], connections=(), conditions=(), **extra: Any) -> dict:
    return {"resources": resources, "connections": [list(c) for c in connections],
            "conditions": list(conditions), **extra}


def cond(res: str, wait_for: str, action: str = "START", state: str = "STARTED") -> dict:
    return {"resources": res, "wait_for": wait_for, "action": action, "state": state}


YAML_CASES = [
    ("no-resources", doc([]), "no resources"),
    ("unset-env", doc([{**NODE, "attributes": {"hostname": {"env": "NEPI_TEST_UNSET_I11"}}}]),
     "NEPI_TEST_UNSET_I11 is not set"),
    ("name-slash", doc([{**NODE, "name": "a/b"}]), "'a/b'"),
    ("name-dotdot", doc([{**NODE, "name": "..x"}]), "'..x'"),
    ("name-space", doc([{**NODE, "name": "a b"}]), "'a b'"),
    ("name-semicolon", doc([{**NODE, "name": "a;b"}]), "'a;b'"),
    ("exp-name-dotdot", doc([NODE], name="../../x"), "'../../x'"),
    ("exp-name-slash", doc([NODE], name="a/b"), "'a/b'"),
    ("exp-name-newline", doc([NODE], name="a\nb"), "'a\\nb'"),
    ("self-cycle", doc(apps("a"), conditions=[cond("a", "a")]), "START of a waits for a STARTED"),
    ("pair-cycle", doc(apps("a", "b"), conditions=[cond("a", "b"), cond("b", "a")]),
     "START of b waits for a STARTED"),
    ("ring-3", doc(apps("a", "b", "c"),
                   conditions=[cond("a", "b"), cond("b", "c"), cond("c", "a")]),
     "START of c waits for a STARTED"),
    ("stop-cycle", doc(apps("a", "b"), conditions=[cond("a", "b", "STOP", "STOPPED"),
                                                   cond("b", "a", "STOP", "STOPPED")]),
     "STOP of b waits for a STOPPED"),
    ("start-stop-cycle", doc(apps("a", "b"), conditions=[cond("a", "b", "START", "STOPPED"),
                                                         cond("b", "a", "STOP", "STARTED")]),
     "START of a waits for b STOPPED"),
    ("app-app", doc(apps("a", "b"), connections=[("a", "b")]),
     "LinuxApplication a cannot be connected to LinuxApplication b"),
    ("node-node", doc([NODE, NODE2], connections=[("n", "m")]),
     "LinuxNode n cannot be connected to LinuxNode m"),
    ("node-self", doc([NODE], connections=[("n", "n")]), "LinuxNode n cannot be connected to itself"),
    ("app-two-nodes", doc([NODE, NODE2] + apps("a"), connections=[("a", "n"), ("a", "m")]),
     "at most 1 LinuxNode"),
    ("hostname-int", doc([{**NODE, "attributes": {"hostname": 123}}]), "got 123"),
    ("ping-no-target", doc([NODE, {"name": "p", "rtype": "LinuxPing"}], connections=[("n", "p")]),
     "LinuxPing p: 'target'"),
    ("traceroute-no-target", doc([NODE, {"name": "t", "rtype": "LinuxTraceroute"}],
                                 connections=[("n", "t")]), "LinuxTraceroute t: 'target'"),
    ("port-word", doc([{**NODE, "attributes": {"hostname": "h", "port": "ssh"}}]), "got 'ssh'"),
    ("home-backquote", doc([{**NODE, "attributes": {"hostname": "h", "home": "/x/`id`"}}]),
     "got '/x/`id`'"),
    ("undeclared-name", doc([NODE], connections=[("n", "ghost")]), "'ghost'"),
    ("wait-failed", doc(apps("a", "b"), conditions=[cond("a", "b", state="FAILED")]), "'FAILED'"),
]


@pytest.mark.parametrize("data,text", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_yaml_refuses(data, text):
    with pytest.raises(DescriptionError) as info:
        description_from_data(yaml.safe_load(yaml.safe_dump(data)), "bad.yaml")
    assert isinstance(info.value, InvalidInputError)
    assert text in str(info.value), str(info.value)


# -- the CLI: validate and run exit 2, naming the value ------------------------------
CLI_CASES = [(f"{verb}-{case[0]}", verb, case[1], case[2]) for case in YAML_CASES[:16]
             for verb in ("validate",)] + [
    (f"run-{case[0]}", "run", case[1], case[2]) for case in YAML_CASES[9:14]]


@pytest.mark.parametrize("verb,data,text", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses(tmp_path, capsys, verb, data, text):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    extra = ["--recorder", "none", "--results", str(tmp_path / "r")] if verb == "run" else []
    assert main([verb, str(path), *extra]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert " ".join(text.split()) in err, err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_table_is_large_enough():
    assert len(API_CASES) + len(YAML_CASES) + len(CLI_CASES) >= 60


def test_node_without_hostname_says_so(tmp_path):
    ec = ExperimentController(exp_id="nohost", local_dir=str(tmp_path), recorder=Recorder())
    try:
        n = ec.register_resource("LinuxNode")
        ec.deploy()
        assert ec.wait_deployed(n, timeout=60)
        failure = ec.get_resource(n).failure if hasattr(ec.get_resource(n), "failure") else None
        text = " ".join(str(x) for x in (failure, ec.failure, ec.summary()) if x)
        assert "hostname" in text, text
    finally:
        ec.shutdown()


def test_describe_marks_required_and_connections(capsys):
    assert main(["describe", "LinuxPing"]) == 0
    text = capsys.readouterr().out
    target = next(line for line in text.splitlines() if " target " in line)
    assert "Required" in target
    assert "connects to: LinuxNode, Collector (at most 1 LinuxNode)" in text

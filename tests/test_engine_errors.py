"""Bad input fails at the call that gave it, with what was wrong and what is valid."""

from __future__ import annotations

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import (
    AttributeValueError,
    ExperimentStateError,
    InvalidInputError,
    UnknownAttributeError,
    UnknownResourceError,
    UnknownResourceTypeError,
    UnknownTraceError,
)
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.execution.trace import TraceAttr

from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)

pytestmark = pytest.mark.usefixtures("engine_types")

S = ResourceState


@pytest.fixture
def ec():
    controller = ExperimentController(exp_id="errors", recorder=Recorder())
    yield controller
    controller.shutdown()


def test_unknown_rtype_lists_known_types(ec):
    with pytest.raises(UnknownResourceTypeError) as err:
        ec.register_resource("NoSuchType")
    assert "NoSuchType" in str(err.value) and "TestNode" in str(err.value)


def test_duplicate_or_invalid_guid(ec):
    ec.register_resource("TestNode", guid=7)
    with pytest.raises(InvalidInputError, match="already taken"):
        ec.register_resource("TestNode", guid=7)
    with pytest.raises(InvalidInputError, match="non-negative integer"):
        ec.register_resource("TestNode", guid="x")
    assert ec.register_resource("TestNode") == 8


@pytest.mark.parametrize("call", [
    lambda ec: ec.get(99, "hostname"),
    lambda ec: ec.set(99, "hostname", "x"),
    lambda ec: ec.state(99),
    lambda ec: ec.register_connection(1, 99),
    lambda ec: ec.register_condition(1, ResourceAction.START, 99, S.STARTED),
    lambda ec: ec.deploy([99]),
    lambda ec: ec.wait([99]),
    lambda ec: ec.trace(99, "stdout"),
])
def test_unknown_guid(ec, call):
    ec.register_resource("TestNode")
    with pytest.raises(UnknownResourceError) as err:
        call(ec)
    assert "99" in str(err.value) and "registered guids: 1" in str(err.value)


def test_unknown_attribute_lists_attributes(ec):
    node = ec.register_resource("TestNode")
    with pytest.raises(UnknownAttributeError) as err:
        ec.set(node, "hostnme", "x")
    assert "hostnme" in str(err.value) and "hostname" in str(err.value) and "port" in str(err.value)
    with pytest.raises(UnknownAttributeError):
        ec.get(node, "nope")


@pytest.mark.parametrize("name,value,expected", [
    ("port", "abc", "an integer"),
    ("port", 2.5, "an integer"),
    ("port", True, "not a boolean"),
    ("port", 70000, "between 1 and 65535"),
    ("mode", "medium", "'fast', 'slow'"),
    ("loss", "lots", "a number"),
    ("verbose", "maybe", "a boolean"),
])
def test_bad_values_are_rejected(ec, name, value, expected):
    node = ec.register_resource("TestNode")
    with pytest.raises(AttributeValueError) as err:
        ec.set(node, name, value)
    assert expected in str(err.value) and name in str(err.value)


def test_values_are_converted(ec):
    node = ec.register_resource("TestNode")
    assert ec.set(node, "port", "2222") == 2222
    assert ec.set(node, "verbose", "true") is True
    assert ec.set(node, "loss", 1) == 1.0
    # a number is not text: hostname=10 is a mistake, refused rather than converted
    with pytest.raises(AttributeValueError, match="'hostname': got 10, expected a string"):
        ec.set(node, "hostname", 10)


def test_secret_values_are_not_echoed_in_errors(ec):
    from nepi_prefect.execution.attribute import Attribute, Flags, Types
    attr = Attribute("token", "a secret number", type=Types.Integer, flags=Flags.Credential)
    with pytest.raises(AttributeValueError) as err:
        attr.validate("s3cr3t-value")
    assert "s3cr3t-value" not in str(err.value)


def test_design_attribute_is_frozen_after_deploy(ec):
    node = ec.register_resource("TestNode")
    ec.set(node, "hostname", "before")
    ec.deploy()
    with pytest.raises(InvalidInputError, match="Design attribute"):
        ec.set(node, "hostname", "after")
    ec.set(node, "label", "runtime attributes still change")
    assert ec.get(node, "hostname") == "before"


def test_unknown_trace(ec):
    app = ec.register_resource("TestApp")
    with pytest.raises(UnknownTraceError) as err:
        ec.enable_trace(app, "stdot")
    assert "stdout" in str(err.value)
    with pytest.raises(UnknownTraceError):
        ec.trace(app, "pcap")
    with pytest.raises(InvalidInputError, match="stream"):
        ec.trace(app, "stdout", attr="everything")
    assert ec.trace(app, "stdout", TraceAttr.SIZE) > 0


@pytest.mark.parametrize("action,state,error", [
    (9, S.STARTED, "unknown or unsupported action 9"),
    (ResourceAction.DEPLOY, S.STARTED, "ResourceAction.START (1)"),
    (ResourceAction.START, 42, "unknown state 42"),
    (ResourceAction.START, S.FAILED, "cannot wait for FAILED"),
])
def test_bad_conditions(ec, action, state, error):
    a, b = ec.register_resource("TestApp"), ec.register_resource("TestApp")
    with pytest.raises(InvalidInputError) as err:
        ec.register_condition(a, action, b, state)
    assert error in str(err.value)


@pytest.mark.parametrize("when", ["5 seconds", "1.5", "-1s", "s", "1d"])
def test_malformed_time(ec, when):
    a, b = ec.register_resource("TestApp"), ec.register_resource("TestApp")
    with pytest.raises(InvalidInputError) as err:
        ec.register_condition(a, ResourceAction.START, b, S.STARTED, when)
    assert '"1.5s"' in str(err.value)
    with pytest.raises(InvalidInputError):
        ec.schedule(when, lambda: None)


def test_wait_with_unknown_state(ec):
    a = ec.register_resource("TestApp")
    with pytest.raises(InvalidInputError, match="unknown state"):
        ec.wait([a], states=[99])


def test_start_from_wrong_state(ec):
    app = ec.register_resource("TestApp")
    with pytest.raises(ExperimentStateError, match="only from READY or STOPPED"):
        ec.start(app)


def test_schedule_needs_a_callable(ec):
    with pytest.raises(InvalidInputError, match="callable"):
        ec.schedule("1s", "not callable")


def test_deploy_after_shutdown_is_refused():
    ec = ExperimentController(recorder=Recorder())
    ec.shutdown()
    with pytest.raises(ExperimentStateError, match="TERMINATED"):
        ec.deploy()

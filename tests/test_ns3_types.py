"""ns-3 types from the TypeId registry, and bad input refused with a clear message.

These read only the cached registry (extracted once, in the session warm-up,
when the cache is missing); none of them runs a simulation.
"""

from __future__ import annotations

import pytest

from nepi_prefect.execution.errors import (
    AttributeValueError, UnknownAttributeError, UnknownResourceTypeError)
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceAction, ResourceFactory, ResourceState
from nepi_prefect.resources.ns3.simulation import start_times
from nepi_prefect.spec.io import description_from_data
from nepi_prefect.spec.validate import DescriptionError
from tests.fixtures.ns3 import ns3_registry  # noqa: F401  (session fixture)
from tests.helpers import add_rm, engine_ec

pytestmark = pytest.mark.usefixtures("ns3_registry")


@pytest.fixture
def ec(tmp_path):
    yield from engine_ec(tmp_path, "ns3types")


def test_types_carry_ns3s_own_attributes():
    device = ResourceFactory.get_resource_type("ns3::PointToPointNetDevice")
    attrs = {a.name: a for a in device.get_attributes()}
    assert attrs["DataRate"].default == "32768bps"
    assert attrs["Mtu"].default == 1500 and attrs["Mtu"].range == (0, 65535)
    assert "transmit queue" in attrs["TxQueue"].help
    assert {"ip", "prefix"} <= set(attrs) and {t.name for t in device.get_traces()} == {"pcap", "ascii"}
    # Inherited attributes come along (Application's StartTime), enums list their values.
    onoff = {a.name: a for a in ResourceFactory.get_resource_type("ns3::OnOffApplication").get_attributes()}
    assert {"StartTime", "StopTime", "DataRate", "Remote", "OnTime"} <= set(onoff)
    errors = {a.name: a for a in ResourceFactory.get_resource_type("ns3::RateErrorModel").get_attributes()}
    assert "ERROR_UNIT_PACKET" in errors["ErrorUnit"].allowed
    # NEPI's name for the packet queue; any creatable ns-3 type loads by name.
    assert ResourceFactory.get_resource_type("ns3::DropTailQueue")._ns3_tid == "ns3::DropTailQueue<Packet>"
    mobility = ResourceFactory.get_resource_type("ns3::ConstantPositionMobilityModel")
    assert "Position" in {a.name for a in mobility.get_attributes()}
    listed = ResourceFactory.resource_types()
    for name in ("ns3::Node", "ns3::CsmaNetDevice", "ns3::CsmaChannel", "ns3::Ipv4L3Protocol",
                 "ns3::UdpEchoServer", "ns3::UdpEchoClient", "ns3::PacketSink", "ns3::Ping",
                 "ns3::Simulation", "ns3::PointToPointChannel"):
        assert name in listed, name


def test_unknown_type_and_attribute_are_refused(ec):
    with pytest.raises(UnknownResourceTypeError, match="ns3::NoSuchDevice"):
        ec.register_resource("ns3::NoSuchDevice")
    dev = ec.register_resource("ns3::PointToPointNetDevice")
    with pytest.raises(UnknownAttributeError, match="DataRate"):
        ec.set(dev, "Datarate", "5Mbps")  # the message lists the real names


@pytest.mark.parametrize("rtype,name,value,expected", [
    ("ns3::PointToPointNetDevice", "DataRate", "fast", "a data rate"),
    ("ns3::PointToPointChannel", "Delay", "2 parsecs", "a time"),
    ("ns3::PointToPointNetDevice", "Mtu", 70000, "between 0 and 65535"),
    ("ns3::RateErrorModel", "ErrorUnit", "PACKETS", "ERROR_UNIT_PACKET"),
    ("ns3::DropTailQueue", "MaxSize", "lots", "a queue size"),
])
def test_values_ns3_would_refuse_are_refused_at_set(ec, rtype, name, value, expected):
    guid = ec.register_resource(rtype)
    with pytest.raises(AttributeValueError, match=expected):
        ec.set(guid, name, value)


def test_validate_names_the_bad_ns3_input():
    with pytest.raises(DescriptionError) as err:
        description_from_data({"resources": [
            {"name": "sim", "rtype": "ns3::Simulation", "attributes": {"stopTime": "soon"}},
            {"name": "x", "rtype": "ns3::NoSuchThing"},
            {"name": "d", "rtype": "ns3::CsmaNetDevice", "attributes": {"Mtu": "big"}}]})
    text = str(err.value)
    assert "resources[0].attributes.stopTime" in text and "a time" in text
    assert "unknown resource type 'ns3::NoSuchThing'" in text
    assert "resources[2].attributes.Mtu" in text


def test_device_without_channel_and_simulation_without_stop_time_fail_at_deploy(tmp_path):
    from nepi_prefect.execution.ec import ExperimentController
    for missing in ("channel", "stopTime"):
        ec = ExperimentController(exp_id=f"ns3bad-{missing}", local_dir=str(tmp_path),
                                  recorder=Recorder())
        try:
            sim = add_rm(ec, "ns3::Simulation", **({} if missing == "stopTime" else {"stopTime": "1s"}))
            node = add_rm(ec, "ns3::Node", sim)
            dev = add_rm(ec, "ns3::PointToPointNetDevice", node, ip="10.0.0.1")
            if missing != "channel":
                add_rm(ec, "ns3::PointToPointChannel", dev)
            ec.deploy()
            assert ec.wait_finished([sim], timeout=60)
            failure = ec.get_resource(sim).failure or ""
            expected = "connected to no channel" if missing == "channel" else "set 'stopTime'"
            assert expected in failure, failure
        finally:
            ec.shutdown()


def test_conditions_between_apps_become_simulated_start_and_stop_times(ec):
    onoff = add_rm(ec, "ns3::OnOffApplication", StartTime="2s", StopTime="9s")
    sink = add_rm(ec, "ns3::PacketSink")
    echo = add_rm(ec, "ns3::UdpEchoClient", StopTime="4s")
    # sink stops 1.5 s after onoff started; onoff stops 2 s after the sink stopped;
    # echo starts when the sink stops, and its own StopTime comes before a late condition.
    ec.register_condition(sink, ResourceAction.STOP, onoff, ResourceState.STARTED, "1.5s")
    ec.register_condition(onoff, ResourceAction.STOP, sink, ResourceState.STOPPED, "2s")
    ec.register_condition(echo, ResourceAction.START, sink, ResourceState.STOPPED)
    ec.register_condition(echo, ResourceAction.STOP, onoff, ResourceState.STOPPED, "1s")
    times = start_times([ec.get_resource(g) for g in (onoff, sink, echo)], 10.0)
    assert times == {onoff: (2.0, 5.5), sink: (0.0, 3.5), echo: (3.5, 4.0)}


def test_a_stop_condition_never_stops_an_app_before_it_starts(ec):
    first, second = add_rm(ec, "ns3::PacketSink", StartTime="5s"), add_rm(ec, "ns3::PacketSink")
    ec.register_condition(first, ResourceAction.STOP, second, ResourceState.STARTED, "1s")
    assert start_times([ec.get_resource(first), ec.get_resource(second)], 10.0)[first] == (5.0, 5.0)

"""What the Prefect UI shows of the flows and blocks: parameter descriptions in the
run forms, rtype as a choice, the blocks' logo and documentation link."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from nepi_prefect.execution.resource import ResourceFactory
from nepi_prefect.flows import converge_flow, experiment_flow, sweep_flow
from nepi_prefect.flows.tasks import run_experiment_task
from nepi_prefect.orchestration.blocks import NodeInventory, SshCredentials


@pytest.mark.parametrize("flow_", [experiment_flow, sweep_flow, converge_flow],
                         ids=lambda f: f.name)
def test_every_flow_parameter_has_a_description(flow_):
    props = parameter_schema(flow_.fn).model_dump()["properties"]
    missing = [name for name, prop in props.items() if not prop.get("description")]
    assert not missing, f"{flow_.name}: parameters without a description: {missing}"
    assert "NAME.ATTR" in props.get("overrides", props.get("grid", {}))["description"]


def test_the_task_parameters_are_documented_too():
    props = parameter_schema(run_experiment_task.fn).model_dump()["properties"]
    assert all(prop.get("description") for prop in props.values())


def test_rtype_is_a_choice_of_the_installed_types():
    schema = parameter_schema(experiment_flow.fn).model_dump()
    rtype = schema["definitions"]["ResourceSpec"]["properties"]["rtype"]
    installed = set(ResourceFactory.resource_types())
    assert {"LinuxNode", "LinuxApplication", "LinuxPing"} <= installed
    assert set(rtype["enum"]) == installed and rtype["type"] == "string"


@pytest.mark.parametrize("block", [SshCredentials, NodeInventory], ids=lambda b: b.__name__)
def test_blocks_have_a_logo_and_a_documentation_link(block):
    block_type = block._to_block_type()
    assert str(block_type.logo_url).startswith("http")
    assert str(block_type.documentation_url).startswith("http")

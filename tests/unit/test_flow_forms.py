"""The run form explains itself: every flow parameter and every spec field has a description
the Prefect UI can show (it drops anything written like an HTML tag, so no angle brackets),
and block parameters say which block type they name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flows._dask import preprocess_on_dask
from flows.benchmark_sweep import benchmark_sweep
from flows.preprocess_dataset import preprocess_dataset
from flows.restage_dataset import restage_dataset
from flows.run_benchmark import run_benchmark
from flows.stage_datasets import stage_datasets
from flows.watch_datasets import watch_datasets

FLOWS = [
    benchmark_sweep,
    run_benchmark,
    preprocess_dataset,
    stage_datasets,
    watch_datasets,
    restage_dataset,
    preprocess_on_dask,  # a subflow: its parameters show on its run's page
]
BLOCK_TYPES = {
    "shared_block": "mlstage-shared-tier",
    "cache_block": "mlstage-cache-settings",
    "clearml_block": "mlstage-clearml-credentials",
}


def schema(flow: Any) -> dict[str, Any]:
    """The parameter schema the deployment stores and the UI renders as the run form."""
    return flow.parameters.model_dump_for_openapi()


def descriptions(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every description in a JSON schema, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield where, value
            else:
                yield from descriptions(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from descriptions(value, f"{where}[{i}]")


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_and_spec_field_has_a_description(flow: Any) -> None:
    s = schema(flow)
    missing = [p for p, prop in s["properties"].items() if not prop.get("description")]
    for name, definition in s.get("definitions", {}).items():
        missing += [
            f"{name}.{p}"
            for p, prop in definition.get("properties", {}).items()
            if not prop.get("description")
        ]
    assert missing == []


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_no_description_has_angle_brackets(flow: Any) -> None:
    found = [(where, text) for where, text in descriptions(schema(flow)) if "<" in text]
    assert found == []


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_block_parameters_name_their_block_type(flow: Any) -> None:
    props = schema(flow)["properties"]
    for param, block_type in BLOCK_TYPES.items():
        if param in props:
            assert f"saved {block_type} block" in props[param]["description"]


def test_the_deployed_schema_is_the_same_as_the_flows() -> None:
    """`prefect deploy` reads the schema from the entrypoint's source: the docstrings must
    parse there too (a description built at import time would not)."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    for flow, path in [
        (benchmark_sweep, "flows/benchmark_sweep.py:benchmark_sweep"),
        (restage_dataset, "flows/restage_dataset.py:restage_dataset"),
    ]:
        from_source = parameter_schema_from_entrypoint(path).model_dump_for_openapi()
        assert [d for _, d in descriptions(from_source["properties"])] == [
            d for _, d in descriptions(schema(flow)["properties"])
        ]

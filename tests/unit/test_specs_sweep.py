"""SweepSpec: a form for the Prefect UI, and one message per problem before any data moves."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlstage.pipeline import validate_sweep
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec

COUNT = "mlstage.testing.workloads:count_files"


def test_sweep_schema_is_a_form_with_launch_choices() -> None:
    schema = SweepSpec.model_json_schema()
    model = schema["$defs"]["ModelSpec"]["properties"]
    assert model["launch"]["enum"] == ["inline", "deployment"]
    assert model["start"]["enum"] == ["ready", "first-shard"]
    assert "description" in model["entrypoint"] and "deployment" in model
    assert set(schema["required"]) == {"datasets", "models"}


def test_references_are_checked() -> None:
    d = DatasetSpec(name="a", uri="/data/a")
    with pytest.raises(ValidationError, match="not in the sweep"):
        SweepSpec(datasets=[d], models=[ModelSpec(name="m", dataset="b", entrypoint=COUNT)])
    with pytest.raises(ValidationError, match="unique"):
        SweepSpec(datasets=[d, d], models=[ModelSpec(name="m", dataset="a", entrypoint=COUNT)])


def test_validate_sweep_lists_every_problem_once() -> None:
    sweep = SweepSpec(
        datasets=[
            DatasetSpec(name="ok", uri="/data/ok"),
            DatasetSpec(name="nowhere", uri="gopher://x/y"),
            DatasetSpec(
                name="typed",
                uri="/data/t",
                recipe=RecipeSpec(name="shard", params={"target_bytes": "big"}),
            ),
        ],
        models=[
            ModelSpec(name="m1", dataset="ok", entrypoint="no_such_module_xyz:train"),
            ModelSpec(name="m2", dataset="ok", entrypoint="python train.py"),
            ModelSpec(name="m3", dataset="nowhere", entrypoint="python t.py --data {data_dir}"),
            ModelSpec(name="m4", dataset="typed", entrypoint=COUNT),
        ],
    )
    problems = validate_sweep(sweep)
    assert len(problems) == 4, problems
    assert problems[0].startswith("dataset nowhere") and "gopher://x/y" in problems[0]
    assert problems[1].startswith("dataset typed") and "target_bytes" in problems[1]
    assert problems[2].startswith("model m1") and "no_such_module_xyz" in problems[2]
    assert problems[3].startswith("model m2") and "{data_dir}" in problems[3]

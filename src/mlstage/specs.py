"""The user's inputs, as pydantic models (the Prefect UI renders them as forms)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PY_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid name: letters, digits, '_', '.', '-' (max 128)")
    return v


class RecipeSpec(BaseModel):
    """How to preprocess a dataset: ``shard``, ``identity`` or a user function ``module:function``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="shard", description="shard, identity, or module:function")
    params: dict[str, Any] = Field(default_factory=dict, description="Recipe parameters.")


class DatasetSpec(BaseModel):
    """A named dataset at a source URI, and how it is preprocessed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name; the resource id is mlstage.dataset.<name>.")
    uri: str = Field(
        description="s3://bucket/prefix, https://host/shard-{000..009}.tar, clearml://..., or a folder"
    )
    recipe: RecipeSpec = Field(default_factory=RecipeSpec)

    _name = field_validator("name")(_check_name)


class ModelSpec(BaseModel):
    """A model to benchmark on one dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dataset: str = Field(description="The name of a dataset in the sweep.")
    entrypoint: str = Field(
        description="module:function called with data_dir=..., or a command containing {data_dir}"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the entrypoint.")
    launch: Literal["inline", "deployment"] = Field(
        default="inline",
        description="inline: a subflow in the sweep's process; deployment: its own run-benchmark run (own pod).",
    )
    deployment: str | None = Field(
        default=None,
        description="launch=deployment: run it as run-benchmark/<deployment>; default: the "
        "sweep's own deployment name (benchmark-sweep/k8s -> run-benchmark/k8s), else default.",
    )
    start: Literal["ready", "first-shard"] = Field(
        default="ready", description="Start when the data is complete, or on the first shard."
    )

    _name = field_validator("name")(_check_name)

    @property
    def is_python(self) -> bool:
        return bool(PY_ENTRYPOINT_RE.match(self.entrypoint))


class SweepSpec(BaseModel):
    """Models x datasets: what benchmark-sweep runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="sweep")
    datasets: list[DatasetSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> SweepSpec:
        names = [d.name for d in self.datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset names must be unique; repeated: {sorted(dup)}")
        mnames = [m.name for m in self.models]
        mdup = {n for n in mnames if mnames.count(n) > 1}
        if mdup:
            raise ValueError(f"model names must be unique; repeated: {sorted(mdup)}")
        unknown = [f"{m.name} -> {m.dataset}" for m in self.models if m.dataset not in names]
        if unknown:
            raise ValueError(f"models name datasets not in the sweep: {unknown}")
        return self

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

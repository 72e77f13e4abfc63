"""The user's inputs, as pydantic models (the Prefect UI renders them as forms).

Every field has a description, shown under it in the UI's run form: plain text without angle
brackets (the UI drops anything written like an HTML tag), placeholders in CAPITALS.

A spec is what a flow run is given, so Prefect's own database stores it as the run's
parameters: a model's secrets are therefore never in its spec, only the names of the Prefect
Secret blocks that hold them (``ModelSpec.secrets``), loaded when the model starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlstage.errors import ConfigError, MlstageError
from mlstage.redact import is_secret_name, scrub_text, secret_block, secret_ref

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PY_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_]\w*$")
# Prefect block document names: lowercase letters, digits and dashes
BLOCK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# Loads a secret by the name of the block that holds it (flows pass one that reads Prefect
# Secret blocks; mlstage itself never imports Prefect).
SecretResolver = Callable[[str], str]


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid name: letters, digits, '_', '.', '-' (max 128)")
    return v


class RecipeSpec(BaseModel):
    """How a dataset is preprocessed, once, before it is staged."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="shard",
        description="shard (pack the files into tar shards), identity (publish them as they "
        "are), or module:function, a recipe of your own called as fn(input_dir, output_dir, "
        "**params); its module must import on the worker (docs/prefect.md).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description='The recipe\'s parameters, e.g. {"target_bytes": 67108864} for shard '
        "(bytes a shard holds). A change makes a new artifact.",
    )


class DatasetSpec(BaseModel):
    """A named dataset at a source URI, and how it is preprocessed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Unique name in the sweep: letters, digits, '_', '.', '-'. The state DB "
        "keeps its versions under it; its events name the resource mlstage.dataset.NAME."
    )
    uri: str = Field(
        description="Where it is read from: s3://bucket/prefix/, a folder on the worker "
        "(/data/x), https://host/shard-{000..009}.tar, or clearml://DATASET_ID. No "
        "credentials in it: S3 keys come from the environment or an mlstage-s3-credentials "
        "block."
    )
    recipe: RecipeSpec = Field(
        default_factory=RecipeSpec,
        description="How it is preprocessed once, on CPU, before any model reads it "
        "(default: shard).",
    )

    _name = field_validator("name")(_check_name)


def _literal_secrets(value: Any, where: str = "") -> list[str]:
    """Where ``value`` holds a literal under a secret-looking name (at any depth), e.g.
    ``hf_token`` or ``db.password``. None, booleans, numbers and empty values hold no secret."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            at = f"{where}.{k}" if where else str(k)
            empty = v is None or isinstance(v, bool | int | float) or v in ("", [], {})
            if is_secret_name(str(k)) and not empty:
                found.append(at)
            else:
                found += _literal_secrets(v, at)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found += _literal_secrets(v, f"{where}[{i}]")
    return found


class ModelSpec(BaseModel):
    """A model to benchmark on one dataset.

    Its secrets (an API token, a database password) are not parameters: ``secrets`` names,
    per parameter, the Prefect Secret block that holds the value, loaded right before the
    entrypoint is called and never recorded (the state DB records secret:BLOCK).
    """

    # an error must not repeat the input: it may be a secret put in the wrong place
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        description="Unique name in the sweep: letters, digits, '_', '.', '-'. A benchmark is "
        "this name on its dataset: its latest run is the one staleness looks at."
    )
    dataset: str = Field(description="The name of one of the sweep's datasets: its data.")
    entrypoint: str = Field(
        description="module:function, called as fn(data_dir=PATH, **params) and returning a "
        "dict of metrics; its module must import on the worker that runs the model "
        "(docs/prefect.md). Or a command containing {data_dir}, e.g. python train.py "
        "--data {data_dir}; its last output line may be a JSON object of metrics."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the entrypoint. No secrets: they go under 'secrets'.",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Parameters loaded from Prefect Secret blocks when the model starts: "
        "parameter name -> Secret block name. The value is never stored; runs record the "
        "block's name.",
    )
    launch: Literal["inline", "deployment"] = Field(
        default="inline",
        description="inline: a task of the sweep, in the sweep's process; deployment: its own "
        "run-benchmark flow run (its own process or pod), which stages the data on its node.",
    )
    deployment: str | None = Field(
        default=None,
        description="For launch=deployment: the model runs as run-benchmark/NAME with this "
        "NAME. Empty: the name of the sweep's own deployment (benchmark-sweep/k8s starts "
        "run-benchmark/k8s), else default.",
    )
    start: Literal["ready", "first-shard"] = Field(
        default="ready",
        description="ready: start once the whole dataset is staged; first-shard: start on the "
        "first staged object while the rest arrives (a module:function with a stream "
        "parameter, or a command with {ready_list}; others wait for the whole dataset).",
    )
    slots: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="How many of its node's slots (e.g. GPUs) the model holds while it runs; "
        "it waits, shown as AwaitingSlot, until that many are free. The capacity is the "
        "Prefect global concurrency limit mlstage-slots-HOSTNAME (or MLSTAGE_SLOT_LIMIT): "
        "prefect gcl create mlstage-slots-HOSTNAME --limit 2. 0: it waits for nothing.",
    )

    _name = field_validator("name")(_check_name)

    @field_validator("params")
    @classmethod
    def _no_literal_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        found = _literal_secrets(v)
        if found:
            raise ConfigError(
                f"model params hold a value under a secret-looking name ({', '.join(found)}): "
                "it would be stored in Prefect's and mlstage's databases",
                hint="put the value in a Prefect Secret block and name that block under "
                f"secrets, e.g. secrets={{'{found[0]}': 'my-token'}}; a parameter that holds "
                "no secret needs a name that does not look like one",
            )
        return v

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: dict[str, str]) -> dict[str, str]:
        for param, block in v.items():
            if not PARAM_NAME_RE.match(param):
                raise ConfigError(
                    f"secrets: {param[:60]!r} is not a parameter name",
                    hint="a parameter name is letters, digits and '_', not starting with a digit",
                )
            if not BLOCK_NAME_RE.match(block):
                raise ConfigError(
                    f"secrets: the block for {param!r} is no Prefect block name",
                    hint="give the name of a Secret block (lowercase letters, digits, '-'), "
                    "never the secret itself",
                )
        return v

    @model_validator(mode="after")
    def _secrets_are_not_params(self) -> ModelSpec:
        both = sorted(set(self.params) & set(self.secrets))
        if both:
            raise ConfigError(
                f"model {self.name}: {', '.join(both)} given both in params and in secrets",
                hint="a secret parameter goes under secrets only",
            )
        return self

    @property
    def is_python(self) -> bool:
        return bool(PY_ENTRYPOINT_RE.match(self.entrypoint))

    @property
    def param_names(self) -> set[str]:
        """Every parameter the entrypoint gets: ``params`` and ``secrets`` alike."""
        return {*self.params, *self.secrets}

    def recorded_params(self) -> dict[str, Any]:
        """The parameters as a run records them: each secret as ``secret:<block>``."""
        return {**self.params, **{p: secret_ref(b) for p, b in self.secrets.items()}}

    def runtime_params(self, resolve: SecretResolver | None) -> dict[str, Any]:
        """The parameters the entrypoint is called with, its secrets loaded now by ``resolve``
        (ConfigError when one cannot be: no resolver, or the block cannot be loaded)."""
        values: dict[str, Any] = {}
        for param, block in self.secrets.items():
            if resolve is None:
                raise ConfigError(
                    f"model {self.name}: parameter {param} is the Secret block {block!r}, and "
                    "nothing here loads Secret blocks",
                    hint="run the model from a flow (benchmark-sweep, run-benchmark), or pass "
                    "resolve_secret= to pipeline.run",
                )
            try:
                values[param] = resolve(block)
            except MlstageError:
                raise
            except Exception as exc:
                said = scrub_text(str(exc)).strip().splitlines()
                raise ConfigError(
                    f"model {self.name}: Secret block {block!r} (parameter {param}) cannot be "
                    f"loaded: {type(exc).__name__}{': ' + said[0][:200] if said else ''}",
                    hint=f"create it: prefect.blocks.system.Secret(value=...).save({block!r})",
                ) from exc
        return {**self.params, **values}

    @classmethod
    def from_record(
        cls, *, name: str, dataset: str, entrypoint: str, params: Mapping[str, Any]
    ) -> ModelSpec:
        """The model a recorded run ran: its ``secret:<block>`` parameters are secrets again."""
        secrets = {p: b for p, v in params.items() if (b := secret_block(v)) is not None}
        plain = {p: v for p, v in params.items() if p not in secrets}
        return cls(name=name, dataset=dataset, entrypoint=entrypoint, params=plain, secrets=secrets)


class SweepSpec(BaseModel):
    """Models x datasets: what benchmark-sweep runs."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        default="sweep",
        description="A name for this sweep: the state DB records it, and its artifacts are "
        "keyed by it (sweep-NAME-summary, sweep-NAME-progress).",
    )
    datasets: list[DatasetSpec] = Field(
        min_length=1,
        description="The datasets the models read: each is resolved, preprocessed and "
        "published once, however many models read it.",
    )
    models: list[ModelSpec] = Field(
        min_length=1,
        description="The models to run: each starts as soon as its own dataset is staged "
        "(and, with slots, once its node has them free).",
    )

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

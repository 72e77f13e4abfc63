"""Preprocess recipes: turn a staged dataset into an artifact, on CPU, deterministically.

An artifact's id is hash(source version, recipe name, recipe code version, parameters), so the
same input and parameters always name the same artifact and preprocessing is skipped whenever
the shared tier already holds it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError

from mlstage.errors import ConfigError
from mlstage.recipes.shard import SHARD_VERSION, ShardParams, write_shards
from mlstage.specs import PY_ENTRYPOINT_RE, RecipeSpec

Apply = Callable[[Path, Path, BaseModel | dict[str, Any]], None]


class NoParams(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class Recipe:
    """A named, versioned preprocessing step with typed parameters."""

    name: str
    version: str
    params: BaseModel | dict[str, Any]
    apply: Callable[[Path, Path], None]

    @property
    def params_json(self) -> str:
        p = (
            self.params.model_dump(mode="json")
            if isinstance(self.params, BaseModel)
            else self.params
        )
        return json.dumps(p, sort_keys=True, default=str)

    def artifact_id(self, fingerprint: str) -> str:
        """The content address of applying this recipe to the dataset version ``fingerprint``."""
        ident = json.dumps([fingerprint, self.name, self.version, self.params_json])
        return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def _typed(model: type[BaseModel], spec: RecipeSpec) -> BaseModel:
    try:
        return model.model_validate(spec.params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"recipe {spec.name!r}: bad parameters: {problems}") from exc


def load_recipe(spec: RecipeSpec) -> Recipe:
    """The Recipe a spec names, with its parameters validated. ConfigError says what is wrong."""
    if spec.name == "shard":
        params = _typed(ShardParams, spec)
        return Recipe("shard", SHARD_VERSION, params, lambda i, o: write_shards(i, o, params))  # type: ignore[arg-type]
    if spec.name == "identity":
        params = _typed(NoParams, spec)
        return Recipe("identity", "1", params, _copy)
    if PY_ENTRYPOINT_RE.match(spec.name):
        fn = import_entrypoint(spec.name, what="recipe")
        try:
            code = inspect.getsource(fn)
        except (OSError, TypeError):
            code = spec.name
        version = hashlib.sha256(code.encode()).hexdigest()[:16]
        params = _check_call(fn, spec)
        return Recipe(spec.name, version, params, lambda i, o: fn(i, o, **params))
    raise ConfigError(
        f"unknown recipe {spec.name!r}", hint="use shard, identity, or module:function"
    )


def _check_call(fn: Callable[..., Any], spec: RecipeSpec) -> dict[str, Any]:
    """Check a user recipe's parameters against its signature and annotations (coerced as pydantic does)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(spec.params)
    try:
        sig.bind(Path("in"), Path("out"), **spec.params)
    except TypeError as exc:
        raise ConfigError(
            f"recipe {spec.name!r}: bad parameters: {exc}",
            hint="a recipe is called as fn(input_dir, output_dir, **params)",
        ) from exc
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip the type check
        hints = {}
    params = dict(spec.params)
    problems = []
    for key, value in spec.params.items():
        if key in hints:
            try:
                params[key] = TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                problems.append(f"{key}: {msg} (got {value!r})")
    if problems:
        raise ConfigError(f"recipe {spec.name!r}: bad parameters: {'; '.join(problems)}")
    return params


def import_entrypoint(ref: str, *, what: str = "entrypoint") -> Callable[..., Any]:
    """Import ``module:function``; ConfigError names what failed to import and why."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{what} {ref!r}: cannot import {module_name!r}: {exc}",
            hint="is the module installed and on PYTHONPATH?",
        ) from exc
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{what} {ref!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{what} {ref!r} is not callable")
    return obj


__all__ = ["Recipe", "ShardParams", "import_entrypoint", "load_recipe"]

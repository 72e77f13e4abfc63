"""Recipes: shard is deterministic, user recipes are checked before any data moves."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from mlstage.errors import ConfigError
from mlstage.recipes import load_recipe
from mlstage.specs import RecipeSpec


def make_input(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"sample-{i:03d}.json").write_text(f'{{"x": {i}}}' * (i % 7 + 1))
        (root / f"sample-{i:03d}.cls").write_text(str(i % 3))
    return root


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_shard_gives_byte_identical_shards_and_ids(tmp_path: Path) -> None:
    spec = RecipeSpec(name="shard", params={"target_bytes": 4096})
    # the same files, written in a different order and at different times
    a = make_input(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    for p in sorted(a.iterdir(), reverse=True):
        (b / p.name).write_bytes(p.read_bytes())
    outs = []
    for src in (a, b):
        out = tmp_path / f"out-{src.name}"
        out.mkdir()
        load_recipe(spec).apply(src, out)
        outs.append(digests(out))
    assert outs[0] == outs[1] and len(outs[0]) > 1
    assert load_recipe(spec).artifact_id("v1") == load_recipe(spec).artifact_id("v1")
    assert load_recipe(spec).artifact_id("v1") != load_recipe(spec).artifact_id("v2")
    other = RecipeSpec(name="shard", params={"target_bytes": 8192})
    assert load_recipe(other).artifact_id("v1") != load_recipe(spec).artifact_id("v1")


def test_shards_keep_samples_whole_and_in_order(tmp_path: Path) -> None:
    src = make_input(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    load_recipe(RecipeSpec(name="shard", params={"target_bytes": 4096})).apply(src, out)
    names = []
    for shard in sorted(out.iterdir()):
        with tarfile.open(shard) as tar:
            members = tar.getnames()
        stems = [m.split(".")[0] for m in members]
        assert stems == sorted(stems)
        names += members
    assert sorted(names) == sorted(p.name for p in src.iterdir())


def test_user_recipe_parameters_are_checked(tmp_path: Path) -> None:
    ok = load_recipe(
        RecipeSpec(name="mlstage.testing.workloads:scaled_recipe", params={"factor": "3"})
    )
    out = tmp_path / "out"
    out.mkdir()
    ok.apply(tmp_path, out)
    assert (out / "factor.txt").read_text() == "6"  # "3" was coerced to the annotated int
    with pytest.raises(ConfigError, match="factor"):
        load_recipe(
            RecipeSpec(name="mlstage.testing.workloads:scaled_recipe", params={"factor": "many"})
        )
    with pytest.raises(ConfigError, match="unexpected keyword|got an unexpected"):
        load_recipe(
            RecipeSpec(name="mlstage.testing.workloads:scaled_recipe", params={"colour": 1})
        )
    with pytest.raises(ConfigError, match="cannot import"):
        load_recipe(RecipeSpec(name="no_such_module_xyz:fn"))
    with pytest.raises(ConfigError, match="target_bytes"):
        load_recipe(RecipeSpec(name="shard", params={"target_bytes": "big"}))

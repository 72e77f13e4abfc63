"""The six verbs end to end on embedded defaults, without Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlstage import pipeline
from mlstage.reader import iter_samples, shard_paths
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec


def write_remote(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"sample-{i:04d}.json").write_text(json.dumps({"x": [i, i % 3], "y": i % 2}))
    return root


@pytest.fixture
def ws(home: Path) -> pipeline.Workspace:
    return pipeline.Workspace.from_settings(get_settings())


def fit(name: str, estimator: str = "logistic") -> ModelSpec:
    """A real model on the toy dataset."""
    return ModelSpec(
        name=name,
        dataset="toy",
        entrypoint="mlstage.examples:fit_and_score",
        params={"estimator": estimator},
    )


def spec(remote: Path) -> DatasetSpec:
    return DatasetSpec(
        name="toy", uri=str(remote), recipe=RecipeSpec(params={"target_bytes": 1024})
    )


def test_resolve_preprocess_stage_run_record(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    resolved = pipeline.resolve(ws, spec(remote))
    assert resolved.new_version and len(resolved.manifest) == 40

    prepared = pipeline.preprocess(ws, resolved)
    assert not prepared.skipped
    shards = [e.path for e in prepared.artifact.manifest.entries]
    assert len(shards) > 1 and all(p.endswith(".tar") for p in shards)

    ready = pipeline.stage(ws, prepared)
    assert not ready.staged.hit and ready.staged.bytes_fetched == prepared.artifact.bytes
    samples = list(iter_samples(shard_paths(ready.staged.path)))
    assert len(samples) == 40  # every sample exactly once
    assert len({s["__key__"] for s in samples}) == 40

    model = fit("m")
    outcome = pipeline.run(ws, model, ready)
    assert outcome.status == "completed" and outcome.metrics["samples"] == 40

    (row,) = ws.state.runs()
    assert row.model == "m" and row.version == resolved.version
    assert row.artifact_id == prepared.artifact.artifact_id and row.cache_hit is False


def test_second_pass_moves_nothing(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    first = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote))))
    again = pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote)))
    assert again.skipped
    second = pipeline.stage(ws, again)
    assert second.staged.hit and second.staged.bytes_fetched == 0
    assert second.artifact_id == first.artifact_id


def test_changed_source_is_a_new_version(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    v1 = pipeline.resolve(ws, spec(remote))
    (remote / "sample-9999.json").write_text(json.dumps({"x": [1, 1], "y": 1}))
    v2 = pipeline.resolve(ws, spec(remote))
    assert v2.new_version and v2.version != v1.version
    assert [v.fingerprint for v in ws.state.versions("toy")] == [v1.version, v2.version]


def test_failing_model_is_recorded_not_raised(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote))))
    bad = fit("bad", "nope")
    outcome = pipeline.run(ws, bad, ready)
    assert outcome.status == "failed" and "nope" in (outcome.error or "")
    assert ws.state.run(outcome.run_id).status == "failed"  # type: ignore[union-attr]


def test_validate_sweep_lists_every_problem(tmp_path: Path) -> None:
    sweep = SweepSpec(
        datasets=[
            DatasetSpec(name="a", uri="gopher://nowhere/x"),
            DatasetSpec(
                name="b", uri=str(tmp_path), recipe=RecipeSpec(params={"target_bytes": "big"})
            ),
        ],
        models=[
            ModelSpec(name="m1", dataset="a", entrypoint="no_such_module:fn"),
            ModelSpec(name="m2", dataset="b", entrypoint="python train.py"),
        ],
    )
    problems = pipeline.validate_sweep(sweep)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "gopher://nowhere/x" in text and "target_bytes" in text
    assert "no_such_module" in text and "{data_dir}" in text


def test_run_restages_data_evicted_after_staging(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote)))
    pipeline.stage(ws, prepared)
    ready = pipeline.stage(ws, prepared)  # a hit: this staging moved nothing
    assert ready.staged.hit
    assert ws.cache.drop(ready.staged.fingerprint)  # eviction between the stage and run tasks
    assert ws.cache.lookup(ready.staged.fingerprint) is None
    model = fit("m")
    outcome = pipeline.run(ws, model, ready)
    assert outcome.status == "completed", outcome.error
    assert ws.cache.lookup(ready.staged.fingerprint) is not None
    # the run consumed its own staging (a miss that moved the bytes), not the evicted one
    (row,) = ws.state.consumed(outcome.run_id)
    assert row.cache_hit is False and row.bytes_fetched == ready.prepared.artifact.bytes
    again = pipeline.run(ws, fit("m2"), ready)  # still cached: the staging it was given counts
    (row2,) = ws.state.consumed(again.run_id)
    assert row2.cache_hit is True and row2.bytes_fetched == 0


def test_a_staging_made_from_this_nodes_output_moved_nothing_from_the_shared_tier(
    ws: pipeline.Workspace, tmp_path: Path
) -> None:
    remote = write_remote(tmp_path / "remote")
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote)), stage_here=True)
    ready = pipeline.stage(ws, prepared)
    outcome = pipeline.run(ws, fit("m"), ready)
    (row,) = ws.state.consumed(outcome.run_id)
    assert row.cache_hit is False and row.bytes_fetched == prepared.artifact.bytes
    assert row.bytes_from_shared == 0  # filed from the recipe's output, on this node


def test_preprocessing_leaves_no_raw_copy_in_the_cache(
    ws: pipeline.Workspace, tmp_path: Path
) -> None:
    """The source is read once for the recipe: what stays on the node is the artifact (when
    staged there), not a second, raw copy of every version preprocessed."""
    remote = write_remote(tmp_path / "remote")
    resolved = pipeline.resolve(ws, spec(remote))
    prepared = pipeline.preprocess(ws, resolved, stage_here=True)
    assert ws.cache.lookup(resolved.version) is None  # the raw source: gone
    kept = [r.fingerprint for r in ws.cache.index.datasets_lru()]
    assert kept == [prepared.artifact.manifest.fingerprint]
    assert ws.cache.stats().bytes == prepared.artifact.bytes


def test_a_raw_source_someone_else_reads_is_kept(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    resolved = pipeline.resolve(ws, spec(remote))
    with ws.cache.use(resolved.source, resolved.manifest):  # a model reading the raw data
        pipeline.preprocess(ws, resolved)
        assert ws.cache.lookup(resolved.version) is not None


def test_an_artifact_this_node_holds_is_staged_and_run_without_reading_its_manifest(
    ws: pipeline.Workspace, tmp_path: Path
) -> None:
    """By artifact id (the run-benchmark path): a node holding it never reads the listing,
    however many files it has."""
    remote = write_remote(tmp_path / "remote")
    first = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote))))
    prepared = pipeline.find_prepared(ws, first.artifact_id)
    ready = pipeline.stage(ws, prepared)
    outcome = pipeline.run(ws, fit("m"), ready)
    assert ready.staged.hit and outcome.status == "completed"
    assert prepared.artifact._manifest is None  # never read


def test_the_six_verbs_are_plain_functions() -> None:
    for verb in ("resolve", "preprocess", "publish", "stage", "run", "record"):
        assert callable(getattr(pipeline, verb)), verb


def test_publish_files_the_output_with_its_origin_and_refuses_an_empty_one(
    ws: pipeline.Workspace, tmp_path: Path
) -> None:
    from mlstage.errors import ConfigError
    from mlstage.recipes import load_recipe

    remote = write_remote(tmp_path / "remote", n=3)
    resolved = pipeline.resolve(
        ws, DatasetSpec(name="toy", uri=str(remote), recipe=RecipeSpec(name="identity"))
    )
    recipe = load_recipe(resolved.spec.recipe)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="produced no files for toy"):
        pipeline.publish(ws, resolved, recipe, empty)
    assert ws.shared.get(recipe.artifact_id(resolved.version)) is None  # nothing half-filed
    artifact = pipeline.publish(ws, resolved, recipe, remote)
    assert artifact.artifact_id == recipe.artifact_id(resolved.version)
    assert artifact.info["version"] == resolved.version and artifact.info["recipe"] == "identity"
    assert len(artifact.manifest) == 3


def test_record_closes_the_run_with_its_outcome(ws: pipeline.Workspace, tmp_path: Path) -> None:
    remote = write_remote(tmp_path / "remote")
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec(remote))))
    model = fit("m")
    row = ws.state.start_run(
        model=model.name, dataset=model.dataset, entrypoint=model.entrypoint, params={}
    )
    done = pipeline.record(ws, row, model, ready, metrics={"score": 0.5})
    assert done.status == "completed" and ws.state.run(row.id).metrics == {"score": 0.5}  # type: ignore[union-attr]
    row = ws.state.start_run(
        model=model.name, dataset=model.dataset, entrypoint=model.entrypoint, params={}
    )
    failed = pipeline.record(ws, row, model, None, error="out of memory")
    stored = ws.state.run(row.id)
    assert failed.status == "failed" and stored is not None and stored.error == "out of memory"

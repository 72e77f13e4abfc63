"""run-benchmark: stage (or find staged) one model's data, run its entrypoint, record."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._workspace import using_blocks
from flows.outcomes import model_outcome
from flows.streaming import run_streaming_task
from flows.tasks import find_task, preprocess_task, run_task, stage_task
from mlstage.errors import ConfigError, RunError
from mlstage.pipeline import validate_models
from mlstage.specs import DatasetSpec, ModelSpec


@flow(name="run-benchmark", log_prints=True)
def run_benchmark(
    model: ModelSpec,
    artifact_id: str | None = None,
    dataset: DatasetSpec | None = None,
    sweep_id: str | None = None,
    shared_block: str | None = None,
    cache_block: str | None = None,
    clearml_block: str | None = None,
) -> dict[str, Any]:
    """One model on one artifact: by id (as benchmark-sweep launches it) or from a DatasetSpec.

    Args:
        model: The model to run: its entrypoint and parameters; with slots, it waits for that
            many free slots of this node's capacity (docs/prefect.md).
        artifact_id: Id of an artifact already on the shared tier (what benchmark-sweep
            passes). Give this or dataset, not both.
        dataset: A dataset to resolve, preprocess and publish first (skipped when its artifact
            exists). Give this or artifact_id, not both.
        sweep_id: The mlstage sweep id this run belongs to (set by benchmark-sweep; empty
            when started by hand).
        shared_block: Name of a saved mlstage-shared-tier block: the shared tier artifacts
            are published to and staged from. Empty: MLSTAGE_SHARED on the worker (default:
            a folder under MLSTAGE_HOME).
        cache_block: Name of a saved mlstage-cache-settings block: this node's cache
            folder, size limit and transfer workers. Empty: the worker's MLSTAGE_CACHE_DIR
            (default: a folder under MLSTAGE_HOME).
        clearml_block: Name of a saved mlstage-clearml-credentials block, used where a
            clearml:// dataset is resolved. Empty: the ClearML SDK's own configuration.
    """
    problems = validate_models([model])
    if (artifact_id is None) == (dataset is None):
        problems.append("give exactly one of artifact_id or dataset")
    if problems:
        raise ConfigError("cannot run the benchmark:\n- " + "\n- ".join(problems))
    with using_blocks(shared_block, cache_block):
        prepared = (
            find_task(artifact_id)
            if artifact_id
            else preprocess_task(
                dataset,
                shared_block,
                clearml_block,
                cache_block,
                stage_here=model.start == "ready",  # a streaming start stages as it runs
            )
        )
        if model.start == "first-shard":  # starts on the first staged object
            done = run_streaming_task(model, prepared, sweep_id, return_state=True)
        else:
            done = run_task(model, stage_task(prepared), sweep_id, return_state=True)
        outcome = model_outcome(done)
    if outcome.status != "completed":
        raise RunError(f"model {model.name} failed: {outcome.error}")
    return {"run_id": outcome.run_id, "model": outcome.model, "metrics": outcome.metrics}

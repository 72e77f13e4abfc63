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

    ``clearml_block`` configures the ClearML SDK where a ``clearml://`` dataset is resolved.
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

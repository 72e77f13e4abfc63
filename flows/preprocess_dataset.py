"""preprocess-dataset: resolve + preprocess + publish datasets, fanned out over a task runner."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows._dask import dask_problems, preprocess_runner, submit_preprocess
from mlstage.errors import ConfigError
from mlstage.pipeline import validate_datasets
from mlstage.specs import DatasetSpec


@flow(name="preprocess-dataset", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def preprocess_dataset(
    datasets: list[DatasetSpec],
    dask_address: str | None = None,
    shared_block: str | None = None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
) -> list[dict[str, Any]]:
    """Publish each dataset's artifact to the shared tier (skipped when it is there already).

    With ``dask_address`` the CPU work runs on that dask.distributed cluster (needs a server).
    ``cache_block``: the cache the raw input is staged into before the recipe reads it.
    """
    problems = validate_datasets(datasets) + dask_problems(dask_address)
    if problems:
        raise ConfigError("cannot preprocess:\n- " + "\n- ".join(problems))
    with preprocess_runner(dask_address) as runner:
        futures = [
            submit_preprocess(runner, d, shared_block, clearml_block, cache_block) for d in datasets
        ]
        wait(futures)
        prepared = [f.result() for f in futures]
    return [
        {
            "dataset": p.dataset,
            "version": p.version,
            "artifact_id": p.artifact.artifact_id,
            "uri": p.artifact.uri,
            "files": len(p.artifact.manifest),
            "bytes": p.artifact.bytes,
            "skipped": p.skipped,
            "seconds": round(p.seconds, 3),
        }
        for p in prepared
    ]

"""preprocess-dataset: resolve + preprocess + publish datasets, fanned out over a task runner."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows._dask import dask_problems, on_dask, submit_preprocess
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

    Args:
        datasets: The datasets to resolve, preprocess and publish, each once.
        dask_address: Address of a running dask.distributed scheduler, e.g.
            tcp://scheduler:8786: preprocessing then runs as a subflow on its workers (which
            need PREFECT_API_URL and the same MLSTAGE settings or blocks). Empty: in this flow
            run's own process.
        shared_block: Name of a saved mlstage-shared-tier block: the shared tier artifacts
            are published to and staged from. Empty: MLSTAGE_SHARED on the worker (default:
            a folder under MLSTAGE_HOME).
        clearml_block: Name of a saved mlstage-clearml-credentials block, used where a
            clearml:// dataset is resolved. Empty: the ClearML SDK's own configuration.
        cache_block: Name of a saved mlstage-cache-settings block: the cache the raw input is
            staged into before the recipe reads it. Empty: the worker's MLSTAGE_CACHE_DIR.
    """
    problems = validate_datasets(datasets) + dask_problems(dask_address)
    if problems:
        raise ConfigError("cannot preprocess:\n- " + "\n- ".join(problems))
    if dask_address:  # one subflow, its task runner on the cluster
        prepared = on_dask(dask_address)(datasets, shared_block, clearml_block, cache_block)
    else:
        futures = [
            submit_preprocess(None, d, shared_block, clearml_block, cache_block) for d in datasets
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

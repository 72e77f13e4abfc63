"""Where CPU preprocessing runs: the flow's own thread pool, or an existing Dask cluster.

On Dask, preprocessing is the subflow ``preprocess-on-dask`` whose task runner is
``DaskTaskRunner(address=...)``: Prefect submits its ``preprocess`` task runs to the cluster's
workers, and the UI shows the subflow (and each task run) under the flow that started it. The
sweep starts one such subflow per dataset, from a task, so each dataset's models still start as
soon as their own data is ready; preprocess-dataset starts one for all its datasets.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from flows.tasks import preprocess_task
from mlstage.pipeline import Prepared
from mlstage.specs import DatasetSpec


def dask_problems(dask_address: str | None) -> list[str]:
    """Why preprocessing cannot run on ``dask_address`` (empty when it can, or when unset)."""
    if not dask_address:
        return []
    from prefect.settings import get_current_settings

    problems = []
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        problems.append(
            "dask_address is set but prefect-dask is not installed: pip install 'mlstage[dask]'"
        )
    if not get_current_settings().api.url:
        problems.append(
            f"dask_address {dask_address!r} needs a Prefect server: Dask workers report task "
            "runs to the Prefect API, and in ephemeral mode each would start its own. Start "
            "`prefect server start` and set PREFECT_API_URL (for this process and the Dask workers)"
        )
    return problems


@flow(name="preprocess-on-dask", log_prints=True)
def preprocess_on_dask(
    datasets: list[DatasetSpec],
    shared_block: str | None = None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
) -> list[Prepared]:
    """Resolve, preprocess and publish each dataset as a task run of this flow's task runner.

    Started through ``on_dask``, whose task runner sends those task runs to a Dask cluster.

    Args:
        datasets: The datasets to preprocess, each once, in parallel on the cluster.
        shared_block: Name of a saved mlstage-shared-tier block the Dask workers publish to.
            Empty: MLSTAGE_SHARED on each Dask worker.
        clearml_block: Name of a saved mlstage-clearml-credentials block, for clearml://
            datasets. Empty: the ClearML SDK's own configuration on the Dask workers.
        cache_block: Name of a saved mlstage-cache-settings block: where a Dask worker stages
            the raw input. Empty: MLSTAGE_CACHE_DIR on each Dask worker.
    """
    futures = [
        preprocess_task.submit(d, shared_block, clearml_block, cache_block) for d in datasets
    ]
    return [f.result() for f in futures]


def on_dask(dask_address: str) -> Flow[..., list[Prepared]]:
    """``preprocess-on-dask`` with ``DaskTaskRunner(address=dask_address)`` as its task runner."""
    from prefect_dask import DaskTaskRunner

    return preprocess_on_dask.with_options(task_runner=DaskTaskRunner(address=dask_address))


@task(name="preprocess-dask", cache_policy=NO_CACHE)
def preprocess_dask_task(
    spec: DatasetSpec,
    dask_address: str,
    shared_block: str | None = None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
) -> Prepared:
    """One dataset preprocessed on the Dask cluster, as its own ``preprocess-on-dask`` subflow."""
    (prepared,) = on_dask(dask_address)([spec], shared_block, clearml_block, cache_block)
    return prepared


def submit_preprocess(
    dask_address: str | None,
    spec: DatasetSpec,
    shared_block: str | None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
    *,
    stage_here: bool = False,
) -> PrefectFuture[Prepared]:
    """Submit one dataset's preprocessing to the flow's task runner: here, or (with
    ``dask_address``) through a ``preprocess-on-dask`` subflow on that cluster.

    ``stage_here``: the flow stages the artifact next; honoured only here (a Dask worker's
    cache is on another node).
    """
    params: dict[str, Any] = {
        "spec": spec,
        "shared_block": shared_block,
        "clearml_block": clearml_block,
        "cache_block": cache_block,
    }
    if dask_address:
        return preprocess_dask_task.submit(dask_address=dask_address, **params)
    return preprocess_task.submit(stage_here=stage_here, **params)

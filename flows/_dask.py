"""Where CPU preprocessing runs: the flow's own thread pool, or an existing Dask cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

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


@contextmanager
def preprocess_runner(dask_address: str | None) -> Iterator[TaskRunner[Any] | None]:
    """A DaskTaskRunner connected to ``dask_address``, or None for the flow's own task runner."""
    if not dask_address:
        yield None
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=dask_address) as runner:
        yield runner


def submit_preprocess(
    runner: TaskRunner[Any] | None,
    spec: DatasetSpec,
    shared_block: str | None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
    *,
    stage_here: bool = False,
) -> PrefectFuture[Prepared]:
    """Submit one dataset's preprocess task to ``runner`` (or the flow's task runner).

    ``stage_here``: the flow stages the artifact next; honoured only in the flow's own task
    runner (a Dask worker's cache is on another node).
    """
    params = {
        "spec": spec,
        "shared_block": shared_block,
        "clearml_block": clearml_block,
        "cache_block": cache_block,
        "stage_here": stage_here and runner is None,
    }
    if runner is None:
        return preprocess_task.submit(**params)
    return runner.submit(preprocess_task, parameters=params)

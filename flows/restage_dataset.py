"""restage-dataset: started by the trigger on ``mlstage.dataset.changed``.

Preprocesses and publishes the new version, warms the caches the watch entry names, lists the
benchmarks the version made stale and, when asked, re-runs them on it. Emits
``mlstage.benchmark.stale`` per stale benchmark and ``mlstage.dataset.restaged``. A version
is re-staged once, however many runs start for it (a claim in the state DB).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows._workspace import load_secret, workspace
from flows.artifacts import best_effort
from flows.outcomes import shown_in_ui
from mlstage.events import emit_from_flow
from mlstage.pipeline import RunOutcome
from mlstage.restage import rerun_table, restage
from mlstage.state.report import key_slug
from mlstage.watch import WatchList, watchlist_path

T = TypeVar("T")


def as_task_run(name: str, fn: Callable[[], T], /) -> T:
    """Run one restage step as its own task run, so the flow run's page shows each step (a
    re-run that failed shows Failed, red, and the restage goes on to the next)."""

    def step() -> Any:
        out = fn()
        return shown_in_ui(out) if isinstance(out, RunOutcome) else out

    state = task(name=name, cache_policy=NO_CACHE)(step)(return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # the step itself broke: so does the restage
        raise result
    return result


@flow(name="restage-dataset", log_prints=True, retries=1, retry_delay_seconds=30)
def restage_dataset(
    dataset: str,
    version: str,
    old_version: str | None = None,
    rerun_stale: bool | None = None,
    watchlist: str | None = None,
) -> dict[str, Any]:
    """Re-stage a new version of a watched dataset: preprocess, publish, warm, list stale runs.

    Args:
        dataset: Name of the changed dataset, as its watch list entry names it (the trigger
            fills it from the event).
        version: The new version (fingerprint) to re-stage; a version the source already
            moved past ends as superseded.
        old_version: The version it replaced, if known (for the record).
        rerun_stale: Re-run the stale benchmarks on the new version. Empty: as the watch list
            entry's rerun_stale says.
        watchlist: Path of the watch list (YAML) on the worker. Empty: MLSTAGE_WATCHLIST, else
            watchlist.yaml under MLSTAGE_HOME.
    """
    logger = get_run_logger()
    if old_version in ("", "None"):  # a template rendering of a missing value
        old_version = None
    entry = WatchList.load(watchlist_path(watchlist)).entry(dataset)
    result = restage(
        workspace(),
        entry,
        version,
        rerun_stale=rerun_stale,
        flow_run_id=flow_run.get_id(),
        resolve_secret=load_secret,
        step=as_task_run,
    )
    if result.status != "restaged":
        logger.info("%s %s: %s, nothing to do", dataset, version[:12], result.status)
        return {"dataset": dataset, "version": version, "status": result.status}
    emit_from_flow(result.events())
    rows = rerun_table(result)
    if rows:
        best_effort(
            "re-run table not published",
            create_table_artifact,
            table=rows,
            key=f"stale-{key_slug(dataset) or 'dataset'}"[:100],
            description=f"benchmarks of {dataset} made stale by {version[:12]}: their score "
            "before, and on the new version when re-run",
        )
    logger.info(
        "%s %s restaged as %s; %d stale, %d re-run",
        dataset,
        version[:12],
        result.artifact_id,
        len(result.stale),
        len(result.reran),
    )
    for s, why in result.not_rerun:
        logger.warning("stale run %s of %s not re-run: %s", s.run_id, s.model, why)
    failed = [r for r in result.reran if r.status != "completed"]
    for r in failed:
        logger.error("re-run of %s failed: %s", r.model, r.error)
    return {
        "dataset": dataset,
        "version": version,
        "old_version": old_version,
        "status": result.status,
        "artifact_id": result.artifact_id,
        "warmed": result.warmed,
        "stale_runs": [s.run_id for s in result.stale],
        "reran": [r.run_id for r in result.reran],
        "not_rerun": [{"run_id": s.run_id, "reason": why} for s, why in result.not_rerun],
        "failed_reruns": [r.run_id for r in failed],
    }

"""restage-dataset: started by the trigger on ``mlstage.dataset.changed``.

Preprocesses and publishes the new version, warms the caches the watch entry names, lists the
benchmarks the version made stale and, when asked, re-runs them on it. Emits
``mlstage.benchmark.stale`` per stale benchmark and ``mlstage.dataset.restaged``. A version
is re-staged once, however many runs start for it (a claim in the state DB).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows._workspace import load_secret, workspace
from mlstage.events import emit_from_flow
from mlstage.restage import restage
from mlstage.watch import WatchList, watchlist_path


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
    )
    if result.status != "restaged":
        logger.info("%s %s: %s, nothing to do", dataset, version[:12], result.status)
        return {"dataset": dataset, "version": version, "status": result.status}
    emit_from_flow(result.events())
    rows = [
        {
            "run_id": s.run_id,
            "model": s.model,
            "consumed_version": s.consumed_version[:12],
            "rerun": next((r.run_id for r in result.reran if r.model == s.model), None),
        }
        for s in result.stale
    ]
    if rows:
        create_table_artifact(
            table=rows,
            key=f"stale-{dataset}".lower().replace("_", "-").replace(".", "-"),
            description=f"benchmarks of {dataset} made stale by {version[:12]}",
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

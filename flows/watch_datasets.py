"""watch-datasets: scheduled; re-resolve every watched dataset, announce settled changes.

Each settled change is recorded as a new version in the state DB and announced with the
Prefect event ``mlstage.dataset.changed`` (resource ``mlstage.dataset.<name>``), which the
restage-dataset deployment's trigger turns into a run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows._workspace import workspace
from mlstage.events import emit_from_flow
from mlstage.watch import WATCHLIST_ENV, WatchList, configured_watchlist, watch, watchlist_path


@flow(name="watch-datasets", log_prints=True)
def watch_datasets(watchlist: str | None = None, confirm: bool = True) -> dict[str, Any]:
    """One pass over the watch list: emit one mlstage.dataset.changed event per settled change.

    Args:
        watchlist: Path of the watch list (YAML) on the worker. Empty: MLSTAGE_WATCHLIST, else
            watchlist.yaml under MLSTAGE_HOME; with neither, the pass watches nothing.
        confirm: Announce a change only once its fingerprint has been stable for the entry's
            settle_seconds (off: announce at first sight).
    """
    logger = get_run_logger()
    path = configured_watchlist(watchlist)
    if path is None:  # deployed by `prefect deploy --all` before anything is watched
        logger.info(
            "nothing to watch: no watch list at %s (create it, or set %s; see docs/restaging.md)",
            watchlist_path(),
            WATCHLIST_ENV,
        )
        return {"changed": {}, "pending": [], "unchanged": [], "errors": {}}
    report = watch(WatchList.load(path), workspace().state, confirm=confirm)
    emit_from_flow(c.event(via="watch") for c in report.changes)
    for c in report.changes:
        logger.info(
            "%s changed: %s -> %s", c.dataset, (c.old_version or "-")[:12], c.new_version[:12]
        )
    for name in report.pending:
        logger.info("%s is still changing; announced once it settles", name)
    for name, err in report.errors.items():
        logger.error("%s: %s", name, err)
    return {
        "changed": {c.dataset: c.new_version for c in report.changes},
        "pending": report.pending,
        "unchanged": report.unchanged,
        "errors": report.errors,
    }


if __name__ == "__main__":
    watch_datasets()

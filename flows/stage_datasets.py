"""stage-datasets: bring published artifacts onto this node, concurrently and deduplicated."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from flows._workspace import using_blocks
from flows.tasks import find_task, stage_task


@flow(name="stage-datasets", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def stage_datasets(
    artifact_ids: list[str],
    shared_block: str | None = None,
    cache_block: str | None = None,
) -> list[dict[str, Any]]:
    """Stage every artifact (each once, all at the same time) into this node's cache.

    Args:
        artifact_ids: Ids of artifacts on the shared tier (preprocess-dataset returns them;
            mlstage lineage runs lists them). Repeated ids are staged once.
        shared_block: Name of a saved mlstage-shared-tier block: the shared tier artifacts
            are published to and staged from. Empty: MLSTAGE_SHARED on the worker (default:
            a folder under MLSTAGE_HOME).
        cache_block: Name of a saved mlstage-cache-settings block: this node's cache
            folder, size limit and transfer workers. Empty: the worker's MLSTAGE_CACHE_DIR
            (default: a folder under MLSTAGE_HOME).
    """
    with using_blocks(shared_block, cache_block):
        futures = [
            stage_task.submit(opaque(find_task.submit(a))) for a in dict.fromkeys(artifact_ids)
        ]
        wait(futures)
        ready = [f.result() for f in futures]
    return [
        {
            "dataset": r.dataset,
            "artifact_id": r.artifact_id,
            "path": str(r.staged.path),
            "cache": "hit" if r.staged.hit else "miss",
            "bytes_staged": r.staged.bytes_fetched,
            "seconds": round(r.staged.seconds, 3),
        }
        for r in ready
    ]

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
    """Stage every artifact (each once, all at the same time) into this node's cache."""
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

"""benchmark-sweep: models x datasets; every model starts as soon as its own data is staged.

preprocess (each distinct dataset once; thread pool or Dask) -> stage (all concurrently)
-> run each model the moment its own dataset is ready: in this process, or as its own
run-benchmark deployment run (its own pod) -> summary table + progress artifacts
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from flows._dask import dask_problems, preprocess_runner, submit_preprocess
from flows._workspace import using_blocks, workspace
from flows.streaming import run_streaming_task
from flows.tasks import run_deployment_task, run_task, stage_task
from mlstage.errors import ConfigError
from mlstage.pipeline import RunOutcome, Workspace, validate_sweep
from mlstage.specs import ModelSpec, SweepSpec
from mlstage.state.redact import scrub_text

PROGRESS_EVERY_S = 0.5


def summarize(ws: Workspace, outcomes: list[RunOutcome], started_at: float) -> list[dict[str, Any]]:
    """One row per model: what it consumed (from the state DB), when its data was ready, its score."""
    rows = []
    recorded = ws.state.runs_by_id([o.run_id for o in outcomes if o.run_id != "-"])
    for o in outcomes:
        lineage = recorded.get(o.run_id)
        r = o.ready
        rows.append(
            {
                "model": o.model,
                "dataset": o.dataset,
                "version": lineage.version[:12] if lineage and lineage.version else None,
                "artifact": lineage.artifact_id[:12] if lineage and lineage.artifact_id else None,
                "cache": None
                if not lineage or lineage.cache_hit is None
                else ("hit" if lineage.cache_hit else "miss"),
                "bytes_staged": (lineage.bytes_fetched or 0) if lineage else 0,
                "ready_s": round(r.ready_at - started_at, 2) if r else None,
                "status": o.status,
                "score": o.metrics.get("score"),
                "error": scrub_text(o.error) if o.error else None,
                "run_id": o.run_id,
            }
        )
    return rows


def child_blocks(
    shared_block: str | None, cache_block: str | None, clearml_block: str | None
) -> dict[str, str | None]:
    """The block names a model launched as its own ``run-benchmark`` run gets (its parameters)."""
    return {
        "shared_block": shared_block,
        "cache_block": cache_block,
        "clearml_block": clearml_block,
    }


def artifact_key(sweep: SweepSpec, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for this sweep."""
    name = "".join(c if c.isalnum() else "-" for c in sweep.name.lower())
    return f"sweep-{name}-{what}"


@flow(name="benchmark-sweep", task_runner=ThreadPoolTaskRunner(), log_prints=True)
def benchmark_sweep(
    sweep: SweepSpec,
    dask_address: str | None = None,
    shared_block: str | None = None,
    cache_block: str | None = None,
    clearml_block: str | None = None,
) -> list[dict[str, Any]]:
    """Preprocess each distinct dataset once, stage all concurrently, run each model when its data is ready.

    A model that fails is reported in the summary and the run's final message; the others go on.
    """
    problems = validate_sweep(sweep) + dask_problems(dask_address)
    if problems:
        raise ConfigError(
            f"the sweep {sweep.name!r} is malformed ({len(problems)} problems; nothing was "
            "moved):\n- " + "\n- ".join(problems)
        )
    blocks = child_blocks(shared_block, cache_block, clearml_block)
    with using_blocks(shared_block, cache_block), preprocess_runner(dask_address) as cpu:
        ws = workspace()
        started_at = time.time()
        record = ws.state.start_sweep(
            sweep.name, sweep.model_dump(mode="json"), flow_run_id=flow_run.get_id()
        )
        progress = create_progress_artifact(
            progress=0.0,
            key=artifact_key(sweep, "progress"),
            description=f"benchmark-sweep {sweep.name}: models finished",
        )
        wanted = {m.dataset for m in sweep.models}
        prepared = {
            d.name: submit_preprocess(cpu, d, shared_block, clearml_block, cache_block)
            for d in sweep.datasets
            if d.name in wanted
        }
        here = {m.dataset for m in sweep.models if m.launch == "inline" and m.start == "ready"}
        ready = {name: stage_task.submit(opaque(prepared[name])) for name in here}

        def launch(m: ModelSpec) -> PrefectFuture[RunOutcome]:
            if m.launch == "deployment":
                return run_deployment_task.submit(m, opaque(prepared[m.dataset]), record.id, blocks)
            if m.start == "first-shard":  # stage and run overlapped: starts on the first object
                return run_streaming_task.submit(m, opaque(prepared[m.dataset]), record.id)
            return run_task.submit(m, opaque(ready[m.dataset]), record.id)

        runs = {m.name: launch(m) for m in sweep.models}
        shown = 0.0  # the progress bar moves at most twice a second (each move is an API call)
        for done, _ in enumerate(as_completed(list(runs.values())), start=1):
            if done == len(runs) or time.monotonic() - shown >= PROGRESS_EVERY_S:
                update_progress_artifact(progress, 100.0 * done / len(runs))
                shown = time.monotonic()

    outcomes = [outcome_of(m, runs[m.name]) for m in sweep.models]
    rows = summarize(ws, outcomes, started_at)
    failed = [r for r in rows if r["status"] != "completed"]
    ws.state.finish_sweep(record.id, "failed" if failed else "completed")
    create_table_artifact(
        table=rows,
        key=artifact_key(sweep, "summary"),
        description=f"benchmark-sweep {sweep.name}: what each model consumed and scored",
    )
    logger = get_run_logger()
    for r in failed:
        logger.error("model %s failed: %s", r["model"], r["error"])
    if failed:
        detail = "; ".join(f"{r['model']}: {r['error']}" for r in failed)
        raise SweepFailed(
            f"{len(failed)} of {len(rows)} models failed, the others completed: {detail}", rows
        )
    return rows


def outcome_of(model: ModelSpec, future: PrefectFuture[RunOutcome]) -> RunOutcome:
    """The model's outcome; a failure to prepare, stage or launch becomes a failed outcome."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - reported per model; the sweep goes on
        error = scrub_text(f"{type(exc).__name__}: {exc}")
        return RunOutcome("-", model.name, model.dataset, "failed", {}, error, None)


class SweepFailed(RuntimeError):
    """Some models failed; ``rows`` still holds every model's outcome."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows

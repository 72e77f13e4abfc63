"""benchmark-sweep: models x datasets; every model starts as soon as its own data is staged.

Per dataset, the pipeline: preprocess (each distinct dataset once; a thread, or a Dask
subflow) -> stage on this node (preprocess stages its own output here, so only a Dask run has
stage tasks) -> run each of its models the moment its data is ready: in this process, or as
its own run-benchmark deployment run (its own pod) -> record. Then a summary table; a progress
artifact moves as models finish.

The datasets' pipelines run side by side; each step is submitted when the one before it
finishes (``SweepSchedule``), so a model's task run begins when its own data is ready rather
than every task run at the start.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture
from prefect.runtime import deployment, flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from flows._dask import dask_problems, submit_preprocess
from flows._workspace import using_blocks, workspace
from flows.artifacts import best_effort
from flows.outcomes import model_outcome
from flows.streaming import run_streaming_task
from flows.sweep_schedule import SweepSchedule, failed_outcome, waits_for_staging
from flows.tasks import run_deployment_task, run_task, stage_task
from mlstage import pipeline
from mlstage.errors import ConfigError
from mlstage.pipeline import Prepared, Ready, RunOutcome, Workspace, validate_sweep
from mlstage.redact import scrub_text
from mlstage.specs import ModelSpec, SweepSpec
from mlstage.state.report import key_slug

PROGRESS_EVERY_S = 0.5


def summarize(ws: Workspace, outcomes: list[RunOutcome], started_at: float) -> list[dict[str, Any]]:
    """One row per model: what it consumed (from the state DB), where those bytes came from,
    when its data was ready (on its own node for a ``launch: deployment`` model), its score."""
    rows = []
    recorded = ws.state.runs_by_id([o.run_id for o in outcomes if o.run_id != "-"])
    for o in outcomes:
        lineage = recorded.get(o.run_id)
        if o.ready is not None:
            ready_at: float | None = o.ready.ready_at
        elif lineage and lineage.staged_at:  # staged by its own run, maybe on another node
            ready_at = datetime.fromisoformat(lineage.staged_at).timestamp()
        else:
            ready_at = None
        rows.append(
            {
                "model": o.model,
                "dataset": o.dataset,
                "version": lineage.version[:12] if lineage and lineage.version else None,
                "artifact": lineage.artifact_id[:12] if lineage and lineage.artifact_id else None,
                "cache": None
                if not lineage or lineage.cache_hit is None
                else ("hit" if lineage.cache_hit else "miss"),
                "data_from": lineage.data_from if lineage else None,
                "bytes_staged": (lineage.bytes_fetched or 0) if lineage else 0,
                "bytes_from_shared": lineage.bytes_from_shared if lineage else None,
                "bytes_from_recipe": lineage.bytes_from_recipe if lineage else None,
                "bytes_from_cache": lineage.bytes_from_cache if lineage else None,
                "node": lineage.node if lineage else None,
                "ready_s": round(ready_at - started_at, 2) if ready_at is not None else None,
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
    """A Prefect artifact key (ASCII lowercase letters, digits, dashes) for this sweep."""
    name = key_slug(sweep.name)[:80].rstrip("-")
    return f"sweep-{name or 'unnamed'}-{what}"


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

    Args:
        sweep: The models and the datasets they read. Each dataset is preprocessed once; each
            model starts as soon as its own data is staged (and its slots are free).
        dask_address: Address of a running dask.distributed scheduler, e.g.
            tcp://scheduler:8786: preprocessing then runs as a subflow on its workers (which
            need PREFECT_API_URL and the same MLSTAGE settings or blocks). Empty: in this flow
            run's own process.
        shared_block: Name of a saved mlstage-shared-tier block: the shared tier artifacts
            are published to and staged from. Empty: MLSTAGE_SHARED on the worker (default:
            a folder under MLSTAGE_HOME).
        cache_block: Name of a saved mlstage-cache-settings block: this node's cache
            folder, size limit and transfer workers. Empty: the worker's MLSTAGE_CACHE_DIR
            (default: a folder under MLSTAGE_HOME).
        clearml_block: Name of a saved mlstage-clearml-credentials block, used where a
            clearml:// dataset is resolved. Empty: the ClearML SDK's own configuration. Passed on, like the other
            two blocks, to the run-benchmark runs of launch=deployment models.
    """
    problems = validate_sweep(sweep) + dask_problems(dask_address)
    if problems:
        raise ConfigError(
            f"the sweep {sweep.name!r} is malformed ({len(problems)} problems; nothing was "
            "moved):\n- " + "\n- ".join(problems)
        )
    blocks = child_blocks(shared_block, cache_block, clearml_block)
    with using_blocks(shared_block, cache_block):
        ws = workspace()
        started_at = time.time()
        wanted = {m.dataset for m in sweep.models}
        preprocessing = {  # data moves first; the bookkeeping below overlaps it
            d.name: submit_preprocess(
                dask_address,
                d,
                shared_block,
                clearml_block,
                cache_block,
                stage_here=any(waits_for_staging(m) for m in sweep.models if m.dataset == d.name),
            )
            for d in sweep.datasets
            if d.name in wanted
        }
        record = ws.state.start_sweep(
            sweep.name, sweep.model_dump(mode="json"), flow_run_id=flow_run.get_id()
        )
        progress = ProgressBar(
            artifact_key(sweep, "progress"),
            f"benchmark-sweep {sweep.name}: models finished",
            len(sweep.models),
        )
        own_deployment = (
            deployment.name if any(m.launch == "deployment" for m in sweep.models) else None
        )
        schedule = SweepSchedule(
            sweep.models,
            launch=lambda m, data, after: submit_model(
                m, data, after, record.id, blocks, own_deployment
            ),
            stage=lambda prepared, after: stage_task.submit(opaque(prepared), wait_for=[after]),
            staged_here=lambda prepared: pipeline.staged_here(ws, prepared),
            idle=progress.show,  # a model finishing after a quiet spell shows within 0.5 s
        )
        for name, future in preprocessing.items():
            schedule.preprocessing(name, future)
        try:
            for finished in schedule:
                progress.advance(finished)
            rows = summarize(ws, schedule.outcomes(outcome_of), started_at)
        except BaseException:  # the flow itself broke (or was cancelled): never left 'running'
            ws.state.finish_sweep(record.id, "failed")
            raise
        failed = [r for r in rows if r["status"] != "completed"]
        ws.state.finish_sweep(record.id, "failed" if failed else "completed")
    best_effort(
        "summary artifact not published",
        create_table_artifact,
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


def submit_model(
    model: ModelSpec,
    data: Prepared | Ready,
    after: PrefectFuture[Any],
    sweep_id: str | None,
    blocks: dict[str, str | None],
    own_deployment: str | None,
) -> PrefectFuture[RunOutcome]:
    """The model's task run, once ``after`` (the step that produced its data) has finished: in
    this process on the staged data, streaming from the first object, or as its own
    run-benchmark deployment run."""
    if model.launch == "deployment":
        return run_deployment_task.submit(
            model, opaque(data), sweep_id, blocks, own_deployment, wait_for=[after]
        )
    if model.start == "first-shard":
        return run_streaming_task.submit(model, opaque(data), sweep_id, wait_for=[after])
    return run_task.submit(model, opaque(data), sweep_id, wait_for=[after])


def outcome_of(model: ModelSpec, future: PrefectFuture[RunOutcome]) -> RunOutcome:
    """The model's outcome (its task run ends Failed when the model failed, still carrying it);
    a task that never produced one (it crashed, or never started) becomes a failed outcome."""
    try:
        return model_outcome(future)
    except Exception as exc:  # noqa: BLE001 - reported per model; the sweep goes on
        return failed_outcome(model, "launch failed", exc)


_NOT_UPDATED = "progress artifact not updated"


class ProgressBar:
    """The sweep's progress artifact (models finished): moved at most every PROGRESS_EVERY_S,
    as each move is an API call, and best effort: the UI's bar never fails the sweep."""

    def __init__(self, key: str, description: str, total: int) -> None:
        self.total, self.done = total, 0
        self._shown, self._at = 0, 0.0
        self._id = best_effort(
            _NOT_UPDATED,
            create_progress_artifact,
            progress=0.0,
            key=key,
            description=description,
        )

    def advance(self, finished: int) -> None:
        self.done += finished
        self.show()

    def show(self) -> None:
        """Move the bar to ``done`` if it lags and it last moved long enough ago (or all are done)."""
        if self._id is None or self.done == self._shown:
            return
        if self.done < self.total and time.monotonic() - self._at < PROGRESS_EVERY_S:
            return
        best_effort(
            _NOT_UPDATED,
            update_progress_artifact,
            artifact_id=self._id,
            progress=100.0 * self.done / self.total,
        )
        self._shown, self._at = self.done, time.monotonic()


class SweepFailed(RuntimeError):
    """Some models failed; ``rows`` still holds every model's outcome."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows

"""benchmark-sweep: models x datasets; every model starts as soon as its own data is staged.

preprocess (each distinct dataset once; thread pool, or a Dask subflow) -> stage (all concurrently; in
this process preprocess stages its own output, so only a Dask run has stage tasks) -> run each
model the moment its own dataset is ready: in this process, or as its own run-benchmark
deployment run (its own pod) -> summary table + progress artifacts

Each step is submitted when the one before it finishes (``Finished``): a model's task run
begins when its own data is ready, rather than every task run at the start.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

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
from flows.tasks import run_deployment_task, run_task, stage_task
from mlstage import pipeline
from mlstage.errors import ConfigError
from mlstage.pipeline import Prepared, Ready, RunOutcome, Workspace, validate_sweep
from mlstage.redact import scrub_text
from mlstage.specs import ModelSpec, SweepSpec
from mlstage.state.report import key_slug

PROGRESS_EVERY_S = 0.5
T = TypeVar("T")


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
        steps: Finished[Step] = Finished()
        wanted = {m.dataset for m in sweep.models}
        for d in sweep.datasets:  # data moves first; the bookkeeping below overlaps it
            if d.name in wanted:
                stages_here = any(waits_for_staging(m) for m in sweep.models if m.dataset == d.name)
                future = submit_preprocess(
                    dask_address,
                    d,
                    shared_block,
                    clearml_block,
                    cache_block,
                    stage_here=stages_here,
                )
                steps.add(future, Step("preprocess", d.name))
        record = ws.state.start_sweep(
            sweep.name, sweep.model_dump(mode="json"), flow_run_id=flow_run.get_id()
        )
        progress = ProgressBar(
            artifact_key(sweep, "progress"),
            f"benchmark-sweep {sweep.name}: models finished",
            len(sweep.models),
        )
        steps.idle = progress.show  # a model finishing after a quiet spell shows within 0.5 s
        outcomes: dict[str, RunOutcome | PrefectFuture[RunOutcome]] = {}
        own_deployment = (
            deployment.name if any(m.launch == "deployment" for m in sweep.models) else None
        )

        def launch(m: ModelSpec, data: Prepared | Ready, upstream: PrefectFuture[Any]) -> None:
            if m.launch == "deployment":
                run = run_deployment_task.submit(
                    m, opaque(data), record.id, blocks, own_deployment, wait_for=[upstream]
                )
            elif m.start == "first-shard":  # stage and run overlapped: starts on the first object
                run = run_streaming_task.submit(m, opaque(data), record.id, wait_for=[upstream])
            else:
                run = run_task.submit(m, opaque(data), record.id, wait_for=[upstream])
            outcomes[m.name] = run
            steps.add(run, Step("model", m.name))

        def fail(models: list[ModelSpec], what: str, exc: BaseException) -> int:
            for m in models:
                outcomes[m.name] = failed_outcome(m, what, exc)
            return len(models)

        def advance(step: Step, future: PrefectFuture[Any]) -> int:
            """Submit what waited on a dataset's finished step; how many models it failed."""
            models = [m for m in sweep.models if m.dataset == step.name]
            here = [m for m in models if waits_for_staging(m)]
            try:
                data = future.result()
            except Exception as exc:  # noqa: BLE001 - reported per model; the others go on
                doomed = models if step.kind == "preprocess" else here
                return fail(doomed, f"{step.name}: {step.kind} failed", exc)
            try:
                if step.kind == "stage":  # staged on this node: its inline models start
                    for m in here:
                        launch(m, data, future)
                    return 0
                for m in models:
                    if m not in here:  # they start on the artifact itself
                        launch(m, data, future)
                if not here:
                    return 0
                ready = pipeline.staged_here(ws, data)  # preprocess staged it here: no stage task
                if ready is None:
                    staging = stage_task.submit(opaque(data), wait_for=[future])
                    steps.add(staging, Step("stage", step.name))
                else:
                    for m in here:
                        launch(m, ready, future)
                return 0
            except Exception as exc:  # noqa: BLE001 - what did not start fails; the rest goes on
                unlaunched = [m for m in models if m.name not in outcomes]
                return fail(unlaunched, f"{step.name}: launching its models failed", exc)

        # Each dataset's next step is submitted when its last one finishes, so a model's task
        # run begins when its own data is ready (not all at the start, competing for the CPU
        # its data needs); a failed step fails the models waiting on it, and only those.
        try:
            for future, step in steps:
                progress.advance(1 if step.kind == "model" else advance(step, future))
            outcomes_in_order = [
                o if isinstance(o, RunOutcome) else outcome_of(m, o)
                for m in sweep.models
                for o in [outcomes[m.name]]
            ]
            rows = summarize(ws, outcomes_in_order, started_at)
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


def outcome_of(model: ModelSpec, future: PrefectFuture[RunOutcome]) -> RunOutcome:
    """The model's outcome (its task run ends Failed when the model failed, still carrying it);
    a task that never produced one (it crashed, or never started) becomes a failed outcome."""
    try:
        return model_outcome(future)
    except Exception as exc:  # noqa: BLE001 - reported per model; the sweep goes on
        return failed_outcome(model, "launch failed", exc)


def failed_outcome(model: ModelSpec, what: str, exc: BaseException) -> RunOutcome:
    """A model that never ran: ``what`` failed first (its dataset's preprocess, its staging...)."""
    error = scrub_text(f"{what}: {type(exc).__name__}: {exc}")
    return RunOutcome("-", model.name, model.dataset, "failed", {}, error, None)


def waits_for_staging(model: ModelSpec) -> bool:
    """Whether the model starts on this node's staged copy (else on the artifact: it streams,
    or its own run-benchmark run stages it wherever that runs)."""
    return model.launch == "inline" and model.start == "ready"


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


@dataclass(frozen=True)
class Step:
    """What a submitted future runs: a dataset's ``preprocess`` or ``stage``, or a ``model``."""

    kind: Literal["preprocess", "stage", "model"]
    name: str


class Finished(Generic[T]):
    """Futures in the order they finish, tagged; more may be added while iterating.

    Iteration ends when every added future has been yielded. Callbacks run in the finishing
    task's thread (or Dask's), so they only enqueue; the flow's own thread does the rest,
    including ``idle()``, called every ``every`` seconds while nothing finishes.
    """

    def __init__(
        self, idle: Callable[[], None] | None = None, every: float = PROGRESS_EVERY_S
    ) -> None:
        self._queue: queue.SimpleQueue[tuple[PrefectFuture[Any], T]] = queue.SimpleQueue()
        self._pending = 0
        self.idle = idle
        self.every = every

    def add(self, future: PrefectFuture[Any], tag: T) -> None:
        future.add_done_callback(lambda f: self._queue.put((f, tag)))
        self._pending += 1  # only once the callback is in place (it may run at once)

    def __iter__(self) -> Iterator[tuple[PrefectFuture[Any], T]]:
        while self._pending:
            try:
                future, tag = self._queue.get(timeout=self.every if self.idle else None)
            except queue.Empty:
                if self.idle is not None:
                    self.idle()
                continue
            self._pending -= 1
            yield future, tag


class SweepFailed(RuntimeError):
    """Some models failed; ``rows`` still holds every model's outcome."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows

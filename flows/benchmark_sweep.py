"""benchmark-sweep: models x datasets; every model starts as soon as its own data is staged."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows._workspace import workspace
from flows.tasks import preprocess_task, run_task, stage_task
from mlstage.errors import ConfigError
from mlstage.pipeline import RunOutcome, validate_sweep
from mlstage.specs import SweepSpec


def summarize(outcomes: list[RunOutcome], started_at: float) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        r = o.ready
        rows.append(
            {
                "model": o.model,
                "dataset": o.dataset,
                "version": r.version[:12] if r else None,
                "artifact": r.artifact_id[:12] if r else None,
                "cache": ("hit" if r.staged.hit else "miss") if r else None,
                "bytes_staged": r.staged.bytes_fetched if r else 0,
                "ready_s": round(r.ready_at - started_at, 2) if r else None,
                "status": o.status,
                "score": o.metrics.get("score"),
                "error": o.error,
                "run_id": o.run_id,
            }
        )
    return rows


@flow(name="benchmark-sweep", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def benchmark_sweep(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Preprocess each distinct dataset once, stage all concurrently, run each model when its data is ready."""
    problems = validate_sweep(sweep)
    if problems:
        raise ConfigError("the sweep is malformed:\n- " + "\n- ".join(problems))
    ws = workspace()
    started_at = time.time()
    record = ws.state.start_sweep(
        sweep.name, sweep.model_dump(mode="json"), flow_run_id=flow_run.get_id()
    )
    wanted = {m.dataset for m in sweep.models}
    ready = {
        d.name: stage_task.submit(preprocess_task.submit(d))
        for d in sweep.datasets
        if d.name in wanted
    }
    runs = {m.name: run_task.submit(m, ready[m.dataset], record.id) for m in sweep.models}
    wait(list(runs.values()))

    outcomes: list[RunOutcome] = []
    for m in sweep.models:
        state = runs[m.name].state
        if state.is_completed():
            outcomes.append(runs[m.name].result())
        else:  # its data could not be prepared or staged; the other models carry on
            err = str(state.message or state.type)
            outcomes.append(RunOutcome("-", m.name, m.dataset, "failed", {}, err, None))
    rows = summarize(outcomes, started_at)
    failed = [r for r in rows if r["status"] != "completed"]
    ws.state.finish_sweep(record.id, "failed" if failed else "completed")
    create_table_artifact(
        table=rows,
        key=f"sweep-{sweep.name}".lower().replace("_", "-"),
        description=f"benchmark-sweep {sweep.name}: what each model consumed and scored",
    )
    logger = get_run_logger()
    for r in failed:
        logger.error("model %s failed: %s", r["model"], r["error"])
    if failed:
        names = ", ".join(r["model"] for r in failed)
        raise SweepFailed(
            f"{len(failed)} of {len(rows)} models failed ({names}); the others completed", rows
        )
    return rows


class SweepFailed(RuntimeError):
    """Some models failed; ``rows`` still holds every model's outcome."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows

"""Prefect tasks over the pipeline verbs; shared by every flow."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from flows._workspace import clearml_configured, load_secret, workspace
from flows.artifacts import best_effort, publish_consumption
from flows.outcomes import shown_in_ui
from flows.slots import model_slots
from mlstage import pipeline
from mlstage.errors import RunError
from mlstage.sources import scheme_of
from mlstage.specs import DatasetSpec, ModelSpec


@task(name="preprocess", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def preprocess_task(
    spec: DatasetSpec,
    shared_block: str | None = None,
    clearml_block: str | None = None,
    cache_block: str | None = None,
    stage_here: bool = False,
) -> pipeline.Prepared:
    """resolve + preprocess + publish: skipped when the shared tier holds the artifact.

    The block names are explicit because this task may run on a Dask worker, outside the
    flow's context. ``stage_here``: this process stages the artifact next (see
    ``pipeline.preprocess``); never on a Dask worker, whose cache is not the flow's.
    """
    ws = workspace(shared_block, cache_block)
    # the ClearML SDK resolves clearml:// datasets; their chunks are read without it
    sdk = clearml_configured(clearml_block) if scheme_of(spec.uri) == "clearml" else nullcontext()
    with sdk:
        resolved = pipeline.resolve(ws, spec)
    return pipeline.preprocess(ws, resolved, stage_here=stage_here)


@task(name="find-artifact", cache_policy=NO_CACHE)
def find_task(artifact_id: str) -> pipeline.Prepared:
    """An artifact already on the shared tier, by id."""
    return pipeline.find_prepared(workspace(), artifact_id)


@task(name="stage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def stage_task(prepared: pipeline.Prepared) -> pipeline.Ready:
    """Bring the artifact onto this node: fetched once however many models want it."""
    return pipeline.stage(workspace(), prepared)


@task(name="run-model", cache_policy=NO_CACHE)
def run_task(
    model: ModelSpec, ready: pipeline.Ready, sweep_id: str | None = None
) -> pipeline.RunOutcome | State[pipeline.RunOutcome]:
    """Run one model on its staged data, record what it consumed, and show it in the UI
    (a failed model's task run ends Failed, with its outcome: see ``flows.outcomes``). Its
    ``secrets`` are loaded from their Secret blocks here, right before it starts; with
    ``slots`` it first waits for that many of this node's (``flows.slots``)."""
    ws = workspace()
    with model_slots(model):  # its data is staged: only the run itself holds the slots
        outcome = pipeline.run(
            ws,
            model,
            ready,
            sweep_id=sweep_id,
            flow_run_id=flow_run.get_id(),
            resolve_secret=load_secret,
        )
    best_effort(
        f"{model.name}: consumption artifact not published",
        publish_consumption,
        state=ws.state,
        run_id=outcome.run_id,
    )
    return shown_in_ui(outcome)


def child_deployment(model: ModelSpec, sweep_deployment: str | None) -> str:
    """The run-benchmark deployment a ``launch=deployment`` model runs as: its own choice, else
    the one named like the sweep's deployment (``benchmark-sweep/k8s`` -> ``run-benchmark/k8s``),
    else ``default``."""
    return model.deployment or sweep_deployment or "default"


@task(name="run-model-deployment", cache_policy=NO_CACHE)
def run_deployment_task(
    model: ModelSpec,
    prepared: pipeline.Prepared,
    sweep_id: str | None = None,
    blocks: dict[str, str | None] | None = None,
    sweep_deployment: str | None = None,
) -> pipeline.RunOutcome | State[pipeline.RunOutcome]:
    """Run one model as its own ``run-benchmark/<deployment>`` flow run (its own process or pod).

    The child stages the artifact on its node (a cache hit when it shares this node's cache),
    runs and records; the outcome is read back from the state DB.
    """
    from prefect.deployments import run_deployment

    name = f"run-benchmark/{child_deployment(model, sweep_deployment)}"
    child = run_deployment(
        name,
        parameters={
            "model": model.model_dump(mode="json"),
            "artifact_id": prepared.artifact.artifact_id,
            "sweep_id": sweep_id,
            **(blocks or {}),
        },
        timeout=None,
        poll_interval=1,
    )
    row = workspace().state.run(str(child.id))
    state = child.state
    if row is None:
        message = state.message if state else "no state"
        raise RunError(
            f"{name} run {child.id} recorded nothing in this sweep's state DB: {message}",
            hint="the sweep and its run-benchmark runs must share one state DB: set "
            "MLSTAGE_STATE_URL (PostgreSQL) for both (on Kubernetes: the mlstage-state-db "
            "Secret)",
        )
    metrics: dict[str, Any] = dict(row.metrics or {})
    error = None if row.status == "completed" else (state.message if state else row.status)
    return shown_in_ui(
        pipeline.RunOutcome(row.run_id, model.name, model.dataset, row.status, metrics, error, None)
    )

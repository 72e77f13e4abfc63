"""Prefect tasks over the pipeline verbs; shared by every flow."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows._workspace import workspace
from flows.artifacts import publish_consumption
from mlstage import pipeline
from mlstage.specs import DatasetSpec, ModelSpec


@task(name="preprocess", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def preprocess_task(spec: DatasetSpec) -> pipeline.Prepared:
    """resolve + preprocess + publish: skipped when the shared tier holds the artifact."""
    ws = workspace()
    return pipeline.preprocess(ws, pipeline.resolve(ws, spec))


@task(name="stage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def stage_task(prepared: pipeline.Prepared) -> pipeline.Ready:
    """Bring the artifact onto this node: fetched once however many models want it."""
    return pipeline.stage(workspace(), prepared)


@task(name="run-model", cache_policy=NO_CACHE)
def run_task(
    model: ModelSpec, ready: pipeline.Ready, sweep_id: str | None = None
) -> pipeline.RunOutcome:
    """Run one model on its staged data, record what it consumed, and show it in the UI."""
    ws = workspace()
    outcome = pipeline.run(ws, model, ready, sweep_id=sweep_id, flow_run_id=flow_run.get_id())
    publish_consumption(ws.state, outcome.run_id)
    return outcome

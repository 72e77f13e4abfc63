"""Flow-side hook for ``start: first-shard``: one task that stages and runs overlapped.

Wiring (for flows/benchmark_sweep.py and run-benchmark): a model with
``start == "first-shard"`` skips ``stage_task`` and runs ``run_streaming_task`` on its
dataset's ``preprocess_task`` future; ``start == "ready"`` keeps ``run_task`` on ``stage_task``::

    prepared = {d.name: preprocess_task.submit(d) for d in sweep.datasets if d.name in wanted}
    ready = {n: stage_task.submit(p) for n, p in prepared.items()
             if any(m.dataset == n and m.start == "ready" for m in sweep.models)}
    runs = {m.name: run_streaming_task.submit(m, prepared[m.dataset], record.id)
            if m.start == "first-shard" else run_task.submit(m, ready[m.dataset], record.id)
            for m in sweep.models}

Several models on one dataset are still fetched once: the cache's single-flight lock makes
the second stager wait, and its stream surfaces the objects the first one lands. The outcome
is a ``RunOutcome`` with ``ready`` set, so ``summarize`` needs no change.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows._workspace import workspace
from mlstage import pipeline
from mlstage.specs import ModelSpec


@task(name="stream-and-run-model", cache_policy=NO_CACHE)
def run_streaming_task(
    model: ModelSpec, prepared: pipeline.Prepared, sweep_id: str | None = None
) -> pipeline.RunOutcome:
    """Start the model on its first staged object while the rest lands; record the run."""
    return pipeline.run_streaming(
        workspace(), model, prepared, sweep_id=sweep_id, flow_run_id=flow_run.get_id()
    )

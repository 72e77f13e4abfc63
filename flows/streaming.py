"""Flow-side hook for ``start: first-shard``: one task that stages and runs overlapped.

Wiring (flows/benchmark_sweep.py and run-benchmark): a model with ``start == "first-shard"``
skips ``stage_task``: it is launched with ``run_streaming_task`` on its dataset's preprocess
result, as soon as that exists; ``start == "ready"`` waits for ``stage_task`` and runs
``run_task``.

Several models on one dataset are still fetched once: the cache's single-flight lock makes
the second stager wait, and its stream surfaces the objects the first one lands. The outcome
is a ``RunOutcome`` with ``ready`` set, so ``summarize`` needs no change.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from flows._workspace import load_secret, workspace
from flows.outcomes import shown_in_ui
from flows.slots import model_slots
from mlstage import pipeline
from mlstage.specs import ModelSpec


@task(name="stream-and-run-model", cache_policy=NO_CACHE)
def run_streaming_task(
    model: ModelSpec, prepared: pipeline.Prepared, sweep_id: str | None = None
) -> pipeline.RunOutcome | State[pipeline.RunOutcome]:
    """Start the model on its first staged object while the rest lands; record the run.

    With ``slots`` it first waits for that many of this node's (staging starts with the run).
    """
    with model_slots(model):
        outcome = pipeline.run_streaming(
            workspace(),
            model,
            prepared,
            sweep_id=sweep_id,
            flow_run_id=flow_run.get_id(),
            resolve_secret=load_secret,
        )
    return shown_in_ui(outcome)

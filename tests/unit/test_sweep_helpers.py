"""benchmark-sweep's own helpers, without a Prefect API: its schedule, Finished, artifact keys."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flows.benchmark_sweep import artifact_key
from flows.sweep_schedule import Finished, SweepSchedule
from mlstage.pipeline import RunOutcome
from mlstage.specs import DatasetSpec, ModelSpec, SweepSpec


class LateFuture:
    """Just what Finished uses of a future: done callbacks, fired from another thread."""

    def __init__(self, after: float) -> None:
        self.after = after

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        threading.Timer(self.after, fn, args=(self,)).start()


def test_finished_yields_in_finishing_order_and_ticks_while_nothing_finishes() -> None:
    ticks: list[float] = []
    steps: Finished[str] = Finished(idle=lambda: ticks.append(time.monotonic()), every=0.05)
    steps.add(LateFuture(0.4), "slow")  # type: ignore[arg-type]
    steps.add(LateFuture(0.0), "fast")  # type: ignore[arg-type]
    order = [tag for _, tag in steps]
    assert order == ["fast", "slow"]
    assert len(ticks) >= 3  # a progress bar waiting on the slow one still moves


def test_finished_takes_futures_added_while_it_is_iterated() -> None:
    steps: Finished[str] = Finished()
    steps.add(LateFuture(0.0), "first")  # type: ignore[arg-type]
    seen = []
    for _, tag in steps:
        seen.append(tag)
        if tag == "first":
            steps.add(LateFuture(0.0), "then")  # type: ignore[arg-type]
    assert seen == ["first", "then"]


def test_every_sweep_name_gives_valid_distinct_artifact_keys() -> None:
    for name in ("Müller Sweep", "résumé/v2", "ÅÄÖ", "a" * 300, "--x--"):
        sweep = SweepSpec(
            name=name,
            datasets=[DatasetSpec(name="d", uri="/data/d")],
            models=[ModelSpec(name="m", dataset="d", entrypoint="x:y")],
        )
        keys = {artifact_key(sweep, "progress"), artifact_key(sweep, "summary")}
        assert len(keys) == 2
        assert all(re.fullmatch(r"[a-z0-9-]{1,100}", k) for k in keys), keys


# The sweep's schedule, with plain concurrent.futures standing in for task runs.


def _model(name: str, dataset: str, **kw: Any) -> ModelSpec:
    return ModelSpec(name=name, dataset=dataset, entrypoint="x:y", **kw)


class Recorder:
    """Submits steps to a thread pool and notes what the schedule asked for, in order."""

    def __init__(self, pool: ThreadPoolExecutor, staged_here: bool = False) -> None:
        self.pool, self.log, self.here = pool, [], staged_here
        self.fail_stage: set[str] = set()
        self.fail_launch: set[str] = set()

    def launch(self, m: ModelSpec, data: Any, after: Future[Any]) -> Future[RunOutcome]:
        assert after.done()  # a model starts only once its data's step has finished
        if m.name in self.fail_launch:
            raise RuntimeError("no such deployment")
        self.log.append(("model", m.name, data))
        return self.pool.submit(
            RunOutcome, "r-" + m.name, m.name, m.dataset, "completed", {}, None, None
        )

    def stage(self, prepared: Any, after: Future[Any]) -> Future[Any]:
        assert after.done()
        self.log.append(("stage", prepared))
        if prepared in self.fail_stage:
            return self.pool.submit(_raise, "disk full")
        return self.pool.submit(lambda: f"ready({prepared})")

    def staged_here(self, prepared: Any) -> Any:
        return f"here({prepared})" if self.here else None

    def schedule(self, models: list[ModelSpec]) -> SweepSchedule:
        return SweepSchedule(
            models, launch=self.launch, stage=self.stage, staged_here=self.staged_here
        )


def _raise(message: str) -> Any:
    raise RuntimeError(message)


def _outcome(m: ModelSpec, future: Future[RunOutcome]) -> RunOutcome:
    return future.result()


def test_each_dataset_goes_on_when_its_own_step_ends_not_the_slowest() -> None:
    models = [_model("a1", "a"), _model("a2", "a"), _model("b1", "b")]
    slow = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        rec = Recorder(pool)
        schedule = rec.schedule(models)
        schedule.preprocessing("b", pool.submit(lambda: (slow.wait(5), "prep-b")[1]))
        schedule.preprocessing("a", pool.submit(lambda: "prep-a"))
        finished = []
        for n in schedule:
            finished.append(n)
            if n and sum(finished) == 2:  # both of a's models are done while b still preprocesses
                assert not slow.is_set()
                slow.set()
        outcomes = schedule.outcomes(_outcome)
    assert sum(finished) == 3 and [o.status for o in outcomes] == ["completed"] * 3
    assert [o.model for o in outcomes] == ["a1", "a2", "b1"]  # the sweep's order
    assert rec.log[:3] == [
        ("stage", "prep-a"),
        ("model", "a1", "ready(prep-a)"),
        ("model", "a2", "ready(prep-a)"),
    ]


def test_a_staging_made_by_preprocess_skips_the_stage_step() -> None:
    with ThreadPoolExecutor(4) as pool:
        rec = Recorder(pool, staged_here=True)
        schedule = rec.schedule([_model("a1", "a")])
        schedule.preprocessing("a", pool.submit(lambda: "prep-a"))
        assert sum(schedule) == 1
    assert rec.log == [("model", "a1", "here(prep-a)")]


def test_a_failed_step_fails_the_models_waiting_on_it_and_only_those() -> None:
    models = [
        _model("a-inline", "a"),
        _model("a-own-pod", "a", launch="deployment"),
        _model("a-stream", "a", start="first-shard"),
        _model("b-inline", "b"),
        _model("c-inline", "c"),
    ]
    with ThreadPoolExecutor(8) as pool:
        rec = Recorder(pool)
        rec.fail_stage = {"prep-a"}
        schedule = rec.schedule(models)
        schedule.preprocessing("a", pool.submit(lambda: "prep-a"))
        schedule.preprocessing("b", pool.submit(_raise, "bucket gone"))
        schedule.preprocessing("c", pool.submit(lambda: "prep-c"))
        assert sum(schedule) == 5  # every model counted once, failed or finished
        by_model = {o.model: o for o in schedule.outcomes(_outcome)}
    # a's staging failed: its inline model fails; the pod and the stream start on the artifact
    assert by_model["a-inline"].status == "failed"
    assert "a: stage failed: RuntimeError: disk full" in str(by_model["a-inline"].error)
    assert ("model", "a-own-pod", "prep-a") in rec.log
    assert ("model", "a-stream", "prep-a") in rec.log
    assert by_model["a-own-pod"].status == by_model["a-stream"].status == "completed"
    assert "b: preprocess failed: RuntimeError: bucket gone" in str(by_model["b-inline"].error)
    assert by_model["c-inline"].status == "completed"


def test_a_model_that_cannot_be_launched_fails_alone() -> None:
    models = [_model("ok", "a", launch="deployment"), _model("broken", "a", launch="deployment")]
    with ThreadPoolExecutor(4) as pool:
        rec = Recorder(pool)
        rec.fail_launch = {"broken"}
        schedule = rec.schedule(models)
        schedule.preprocessing("a", pool.submit(lambda: "prep-a"))
        assert sum(schedule) == 2
        by_model = {o.model: o for o in schedule.outcomes(_outcome)}
    assert by_model["ok"].status == "completed"
    assert "launching its models failed" in str(by_model["broken"].error)

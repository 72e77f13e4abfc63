"""The sweep's schedule: each dataset's pipeline, every step submitted when the one before ends.

    preprocess(dataset) --> stage on this node --> its models that start on staged data
                       \\--> its other models (streaming, or their own run-benchmark run)

A dataset whose preprocess already staged its output here skips the stage step. A step that
fails fails the models waiting on it, and only those. The schedule knows futures (anything
with ``add_done_callback`` and ``result``), not Prefect: the flow hands it the functions that
submit task runs, and the tests hand it plain ``concurrent.futures``.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from mlstage.pipeline import Prepared, Ready, RunOutcome
from mlstage.redact import scrub_text
from mlstage.specs import ModelSpec

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
IDLE_EVERY_S = 0.5


class Pending(Protocol[T_co]):
    """What the schedule needs of a future (Prefect's, Dask's, or concurrent.futures')."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def result(self) -> T_co: ...


# (model, its data, the future that produced the data) -> the model's submitted run
LaunchModel = Callable[[ModelSpec, "Prepared | Ready", Pending[Any]], Pending[RunOutcome]]
# (an artifact preprocessed elsewhere, its preprocess future) -> its staging on this node
StageHere = Callable[[Prepared, Pending[Any]], Pending[Ready]]


@dataclass(frozen=True)
class Step:
    """What a submitted future runs: a dataset's ``preprocess`` or ``stage``, or a ``model``."""

    kind: Literal["preprocess", "stage", "model"]
    name: str


class Finished(Generic[T]):
    """Futures in the order they finish, tagged; more may be added while iterating.

    Iteration ends when every added future has been yielded. Callbacks run in the finishing
    task's thread (or Dask's), so they only enqueue; the caller's thread does the rest,
    including ``idle()``, called every ``every`` seconds while nothing finishes.
    """

    def __init__(self, idle: Callable[[], None] | None = None, every: float = IDLE_EVERY_S) -> None:
        self._queue: queue.SimpleQueue[tuple[Pending[Any], T]] = queue.SimpleQueue()
        self._pending = 0
        self.idle = idle
        self.every = every

    def add(self, future: Pending[Any], tag: T) -> None:
        future.add_done_callback(lambda f: self._queue.put((f, tag)))
        self._pending += 1  # only once the callback is in place (it may run at once)

    def __iter__(self) -> Iterator[tuple[Pending[Any], T]]:
        while self._pending:
            try:
                future, tag = self._queue.get(timeout=self.every if self.idle else None)
            except queue.Empty:
                if self.idle is not None:
                    self.idle()
                continue
            self._pending -= 1
            yield future, tag


def waits_for_staging(model: ModelSpec) -> bool:
    """Whether the model starts on this node's staged copy (else on the artifact: it streams,
    or its own run-benchmark run stages it wherever that runs)."""
    return model.launch == "inline" and model.start == "ready"


def failed_outcome(model: ModelSpec, what: str, exc: BaseException) -> RunOutcome:
    """A model that never ran: ``what`` failed first (its dataset's preprocess, its staging...)."""
    error = scrub_text(f"{what}: {type(exc).__name__}: {exc}")
    return RunOutcome("-", model.name, model.dataset, "failed", {}, error, None)


class SweepSchedule:
    """Runs every dataset's pipeline for ``models``; iterate it to drive it to the end.

    ``launch`` submits a model's run, ``stage`` a staging on this node, and ``staged_here``
    returns the staging a preprocess made on this node (None: stage it). Each iteration step
    yields how many models just finished or failed (for a progress bar); ``idle`` is called
    every ``IDLE_EVERY_S`` while nothing finishes.
    """

    def __init__(
        self,
        models: Sequence[ModelSpec],
        *,
        launch: LaunchModel,
        stage: StageHere,
        staged_here: Callable[[Prepared], Ready | None],
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.models = list(models)
        self._launch_model = launch
        self._stage = stage
        self._staged_here = staged_here
        self._steps: Finished[Step] = Finished(idle)
        self._runs: dict[str, RunOutcome | Pending[RunOutcome]] = {}

    def preprocessing(self, dataset: str, future: Pending[Prepared]) -> None:
        """The dataset's first step, already submitted: its pipeline goes on from there."""
        self._steps.add(future, Step("preprocess", dataset))

    def __iter__(self) -> Iterator[int]:
        for future, step in self._steps:
            yield 1 if step.kind == "model" else self._advance(step, future)

    def outcomes(self, outcome_of: Callable[[ModelSpec, Any], RunOutcome]) -> list[RunOutcome]:
        """Every model's outcome in the sweep's order, once iterated to the end; a launched
        model's through ``outcome_of(model, its future)``."""
        return [
            run if isinstance(run, RunOutcome) else outcome_of(m, run)
            for m in self.models
            for run in [self._runs[m.name]]
        ]

    def _advance(self, step: Step, future: Pending[Any]) -> int:
        """Submit what waited on a dataset's finished step; how many models it failed."""
        models = [m for m in self.models if m.dataset == step.name]
        here = [m for m in models if waits_for_staging(m)]
        try:
            data = future.result()
        except Exception as exc:  # noqa: BLE001 - reported per model; the others go on
            doomed = models if step.kind == "preprocess" else here
            return self._fail(doomed, f"{step.name}: {step.kind} failed", exc)
        try:
            if step.kind == "stage":  # staged on this node: its waiting models start
                for m in here:
                    self._launch(m, data, future)
                return 0
            for m in models:
                if m not in here:  # they start on the artifact itself
                    self._launch(m, data, future)
            if here:
                ready = self._staged_here(data)
                if ready is None:
                    self._steps.add(self._stage(data, future), Step("stage", step.name))
                else:  # preprocess staged its output here: no stage step
                    for m in here:
                        self._launch(m, ready, future)
            return 0
        except Exception as exc:  # noqa: BLE001 - what did not start fails; the rest goes on
            unlaunched = [m for m in models if m.name not in self._runs]
            return self._fail(unlaunched, f"{step.name}: launching its models failed", exc)

    def _launch(self, model: ModelSpec, data: Prepared | Ready, after: Pending[Any]) -> None:
        run = self._launch_model(model, data, after)
        self._runs[model.name] = run
        self._steps.add(run, Step("model", model.name))

    def _fail(self, models: list[ModelSpec], what: str, exc: BaseException) -> int:
        for m in models:
            self._runs[m.name] = failed_outcome(m, what, exc)
        return len(models)

"""A model's outcome as its task run reports it: Completed, or Failed (red in the UI) with the
outcome still attached, so the sweep reads every model's outcome the same way."""

from __future__ import annotations

from typing import Any

from prefect.states import Failed, State

from mlstage.pipeline import RunOutcome
from mlstage.state.redact import scrub_text


def shown_in_ui(outcome: RunOutcome) -> RunOutcome | State[RunOutcome]:
    """What a model's task returns: the outcome, or for a model that failed a Failed state
    carrying it (its run is recorded as failed; the task run must not show green)."""
    if outcome.status == "completed":
        return outcome
    return Failed(
        message=scrub_text(f"model {outcome.model} failed: {outcome.error}"), data=outcome
    )


def model_outcome(done: Any) -> RunOutcome:
    """The outcome a finished model task run (its future or final state) carries; the task's
    own error is raised when it never produced one (it crashed, or never started)."""
    result = done.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, RunOutcome):
        raise TypeError(f"a model task returned {type(result).__name__}, not a RunOutcome")
    return result

"""A model's outcome as its task run reports it: Completed, or Failed (red in the UI) with the
outcome still attached, so the sweep reads every model's outcome the same way."""

from __future__ import annotations

import logging
from typing import Any

from prefect.states import Failed, State

from mlstage.pipeline import RunOutcome
from mlstage.redact import scrub_text


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task run that returned a Failed state with ``exc_info=True`` though no
    exception is being handled, so the log (and the UI) showed a stray "NoneType: None"
    traceback under every failed model. This drops the empty exception info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[0] is None:
            record.exc_info = None
        return True


def _quiet_empty_tracebacks(logger: logging.Logger) -> None:
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())


_quiet_empty_tracebacks(logging.getLogger("prefect.task_runs"))


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

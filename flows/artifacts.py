"""Prefect artifacts that show, in the UI, exactly what each benchmark run consumed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from mlstage.state import StateStore
from mlstage.state.report import artifact_key, consumption_markdown, consumption_table

T = TypeVar("T")


def best_effort(what: str, api: Callable[..., T], **kwargs: Any) -> T | None:
    """``api(**kwargs)``, a Prefect artifact call; a failure is a warning ("<what>: ...") and
    None: artifacts are for the UI, and what they show is already in the state DB."""
    try:
        return api(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the run's outcome stands without its artifact
        get_run_logger().warning("%s: %s", what, exc)
        return None


def publish_consumption(state: StateStore, run_id: str) -> UUID | None:
    """A table artifact of run ``run_id``'s consumption, keyed per model; None if no rows."""
    rows = state.consumed(run_id)
    if not rows:
        return None
    return create_table_artifact(
        table=consumption_table(rows),
        key=artifact_key(rows[0].model),
        description=consumption_markdown(rows),
    )

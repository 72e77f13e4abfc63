"""Prefect artifacts that show, in the UI, exactly what each benchmark run consumed."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import create_table_artifact

from mlstage.state import StateStore
from mlstage.state.report import artifact_key, consumption_markdown, consumption_table


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

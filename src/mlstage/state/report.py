"""What a run consumed, as a table for people (the Prefect table artifact, reports)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mlstage.state.store import LineageRow

CONSUMPTION_COLUMNS = [
    "model",
    "dataset",
    "version",
    "source",
    "artifact",
    "cache_hit",
    "node",
    "data_from",
    "bytes_total",
    "bytes_fetched",
    "bytes_from_shared",
    "bytes_from_source",
    "bytes_from_recipe",
    "bytes_from_cache",
    "first_object_s",
    "ready_s",
    "run_id",
    "status",
]


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def consumption_table(rows: Sequence[LineageRow]) -> list[dict[str, Any]]:
    """One table row per consumed artifact, with full ids (a table is for copying from)."""
    return [
        {
            "model": r.model,
            "dataset": r.dataset,
            "version": r.version,
            "source": r.source_uri,
            "artifact": r.artifact_id,
            "cache_hit": r.cache_hit,
            "node": r.node,
            "data_from": r.data_from,
            "bytes_total": r.bytes_total,
            "bytes_fetched": r.bytes_fetched,
            "bytes_from_shared": r.bytes_from_shared,
            "bytes_from_source": r.bytes_from_source,
            "bytes_from_recipe": r.bytes_from_recipe,
            "bytes_from_cache": r.bytes_from_cache,
            "first_object_s": _seconds(r.first_object_seconds),
            "ready_s": _seconds(r.ready_seconds),
            "run_id": r.run_id,
            "status": r.status,
        }
        for r in rows
    ]


def key_slug(name: str) -> str:
    """``name`` as a piece of a Prefect artifact key: ASCII lowercase letters, digits, dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def artifact_key(model: str) -> str:
    """A Prefect artifact key for a model's consumption table (lowercase, digits, dashes)."""
    return f"mlstage-consumed-{key_slug(model) or 'model'}"[:100].rstrip("-")


def consumption_markdown(rows: Sequence[LineageRow]) -> str:
    """A one-paragraph description of what the run read, for the artifact's description."""
    if not rows or rows[0].version is None:
        return "This run has no recorded consumption."
    parts = [
        f"`{r.dataset}` version `{(r.version or '')[:12]}` via artifact "
        f"`{(r.artifact_id or '')[:12]}` ({'cache hit' if r.cache_hit else 'fetched'}, "
        f"from {r.data_from or 'nothing recorded'})"
        for r in rows
    ]
    return f"Run `{rows[0].run_id}` of model `{rows[0].model}` consumed " + "; ".join(parts) + "."

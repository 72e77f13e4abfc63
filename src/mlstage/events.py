"""The Prefect events mlstage emits: names, resources and payloads in one place.

    mlstage.dataset.changed    a watched source settled on a new version (watch, notify)
    mlstage.dataset.restaged   the new version was preprocessed, published and staged
    mlstage.benchmark.stale    a benchmark run consumed a version that is no longer current

Builders return plain ``EventSpec`` values so the library stays Prefect-free and testable;
``emit`` (called only by flows and the CLI) hands them to Prefect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlstage.redact import scrub_params, scrub_uri

DATASET_CHANGED = "mlstage.dataset.changed"
DATASET_RESTAGED = "mlstage.dataset.restaged"
BENCHMARK_STALE = "mlstage.benchmark.stale"


def dataset_resource(name: str) -> dict[str, str]:
    """The resource of a dataset's events: ``mlstage.dataset.<name>``, its name as a label."""
    return {
        "prefect.resource.id": f"mlstage.dataset.{name}",
        "prefect.resource.name": name,
        "mlstage.dataset.name": name,
    }


@dataclass(frozen=True)
class EventSpec:
    """One event to emit: what happened, to which resource, with which details."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)
    related: list[dict[str, str]] = field(default_factory=list)


def dataset_changed(
    dataset: str, old_version: str | None, new_version: str, source: str, *, via: str
) -> EventSpec:
    """A watched dataset settled on ``new_version``; ``via`` says who saw it (watch, notify)."""
    return EventSpec(
        DATASET_CHANGED,
        dataset_resource(dataset),
        {
            "dataset": dataset,
            "old_version": old_version,
            "version": new_version,
            "source": scrub_uri(source),
            "via": via,
        },
    )


def dataset_restaged(
    dataset: str,
    version: str,
    artifact_id: str,
    *,
    stale_runs: list[str],
    reran: list[str],
    warmed: list[str],
    not_rerun: list[dict[str, str]] | None = None,
) -> EventSpec:
    """``version`` of ``dataset`` is published as ``artifact_id`` and staged in ``warmed``.

    ``not_rerun``: stale runs that could not be re-run (``run_id`` and ``reason``).
    """
    return EventSpec(
        DATASET_RESTAGED,
        dataset_resource(dataset),
        {
            "dataset": dataset,
            "version": version,
            "artifact_id": artifact_id,
            "stale_runs": stale_runs,
            "reran": reran,
            "not_rerun": not_rerun or [],
            "warmed": warmed,
        },
    )


def benchmark_stale(
    run_id: str, model: str, dataset: str, consumed: str | None, current: str
) -> EventSpec:
    """Benchmark run ``run_id`` consumed ``consumed``; the dataset is now at ``current``."""
    return EventSpec(
        BENCHMARK_STALE,
        {
            "prefect.resource.id": f"mlstage.benchmark.{run_id}",
            "prefect.resource.name": model,
            "mlstage.model.name": model,
        },
        {
            "run_id": run_id,
            "model": model,
            "dataset": dataset,
            "consumed_version": consumed,
            "version": current,
        },
        related=[{**dataset_resource(dataset), "prefect.resource.role": "dataset"}],
    )


def emit(events: Iterable[EventSpec]) -> int:
    """Send ``events`` to the Prefect API (PREFECT_API_URL) and wait until they are sent.

    Called at the flow/CLI boundary only. Returns how many were sent.
    """
    import asyncio

    from prefect.events import Event, RelatedResource, Resource
    from prefect.events.clients import get_events_client

    built = [
        Event(
            event=e.event,
            resource=Resource(e.resource),
            related=[RelatedResource(r) for r in e.related],
            payload=scrub_params(e.payload),
        )
        for e in events
    ]
    if not built:
        return 0

    async def send() -> None:
        async with get_events_client() as client:
            for ev in built:
                await client.emit(ev)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(send())
        except Exception as exc:  # noqa: BLE001 - re-raised below, mapped
            errors.append(exc)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        run()
    else:  # inside an event loop (an async flow): send from a thread of our own
        import threading

        t = threading.Thread(target=run)
        t.start()
        t.join()
    if errors:
        from mlstage.errors import MlstageError

        raise MlstageError(
            f"cannot send events to the Prefect API: {type(errors[0]).__name__}: {errors[0]}",
            hint="set PREFECT_API_URL to a running Prefect server",
        ) from errors[0]
    return len(built)


def emit_from_flow(events: Iterable[EventSpec]) -> int:
    """Emit ``events`` from inside a flow run with ``prefect.events.emit_event``.

    Prefect relates them to the flow run and sends them before the run ends.
    """
    from prefect.events import emit_event

    n = 0
    for e in events:
        emit_event(
            event=e.event, resource=e.resource, payload=scrub_params(e.payload), related=e.related
        )
        n += 1
    return n

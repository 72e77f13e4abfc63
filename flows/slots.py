"""Slots for models: a model holds ``ModelSpec.slots`` of its node's capacity while it runs.

The capacity is a Prefect global concurrency limit, so Prefect's own machinery hands slots
out and the UI's Concurrency page shows who holds them:

    prefect gcl create mlstage-slots-HOSTNAME --limit 2     # this node has 2 GPUs

The limit is named by MLSTAGE_SLOT_LIMIT, else ``mlstage-slots-`` and the node's hostname (one
limit per node; give every worker of a pool the same MLSTAGE_SLOT_LIMIT for one per pool).
A model that must wait says so in its task run's log and shows as ``AwaitingSlot`` in the UI
until its slots are free; the slots are taken after its data is staged and released as soon
as it finishes, failed or not.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from mlstage.errors import ConfigError
from mlstage.settings import get_settings
from mlstage.specs import ModelSpec

if TYPE_CHECKING:
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

log = logging.getLogger("mlstage.flows.slots")
PREFIX = "mlstage-slots-"
WAITING = "AwaitingSlot"  # the state name a waiting model's task run shows in the UI


def slot_limit_name(hostname: str | None = None) -> str:
    """The global concurrency limit whose slots this node's models hold: MLSTAGE_SLOT_LIMIT,
    else ``mlstage-slots-`` and this node's hostname (lowercase; other characters than
    letters, digits, '.', '-' become '-')."""
    configured = get_settings().slot_limit
    if configured:
        return configured
    host = re.sub(r"[^a-z0-9.-]+", "-", (hostname or socket.gethostname()).lower()).strip("-")
    return PREFIX + (host or "node")


def _read_limit(name: str) -> GlobalConcurrencyLimitResponse | None:
    """The limit ``name`` as the server has it now, or None when there is none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None


def _show_state(name: str, message: str | None = None) -> None:
    """Show the running task run as ``name`` in the UI (a Pending state for a waiting model,
    Running again once it runs). Best effort: reported the way Prefect's task engine reports
    its own states (an event the server records); the engine's later states supersede it."""
    from prefect.context import TaskRunContext
    from prefect.states import Pending, Running
    from prefect.utilities.engine import emit_task_run_state_change_event

    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:
        return
    task_run = ctx.task_run
    state: Any = Pending(name=name, message=message) if name == WAITING else Running()
    state.state_details.task_run_id = task_run.id
    state.state_details.flow_run_id = task_run.flow_run_id
    try:
        emit_task_run_state_change_event(
            task_run=task_run, initial_state=task_run.state, validated_state=state
        )
    except Exception as exc:  # noqa: BLE001 - the UI's view never stops a model
        log.debug("task run state %s not shown: %s", name, exc)


@contextmanager
def model_slots(model: ModelSpec) -> Iterator[None]:
    """Hold ``model.slots`` slots of this node's limit for the block (nothing when 0).

    Without the limit the model runs at once, with a warning saying how to create it; a
    model asking for more slots than the limit has fails at once (it would wait forever).
    """
    if model.slots == 0:
        yield
        return
    from prefect import get_run_logger
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    logger = get_run_logger()
    name = slot_limit_name()
    limit = _read_limit(name)
    if limit is None or not limit.active:
        why = "is inactive" if limit is not None else "does not exist"
        logger.warning(
            "model %s asks for %d slot(s), but the global concurrency limit %s %s: it runs "
            "without waiting (create it: prefect gcl create %s --limit N)",
            model.name,
            model.slots,
            name,
            why,
            name,
        )
        yield
        return
    if model.slots > limit.limit:
        raise ConfigError(
            f"model {model.name} asks for {model.slots} slots; {name} has {limit.limit}",
            hint=f"lower the model's slots, or raise the limit: prefect gcl update {name} "
            f"--limit {model.slots}",
        )
    with ExitStack() as held:
        try:  # one request: granted at once, or refused (423) because the slots are held
            held.enter_context(concurrency(name, occupy=model.slots, max_retries=0))
        except ConcurrencySlotAcquisitionError as exc:
            if not _locked(exc):
                raise
            now = _read_limit(name) or limit
            message = (
                f"waiting for {model.slots} slot(s) of {name} "
                f"({now.active_slots} of {now.limit} held)"
            )
            logger.info("model %s is %s", model.name, message)
            _show_state(WAITING, message)
            started = time.monotonic()
            held.enter_context(concurrency(name, occupy=model.slots))
            logger.info(
                "model %s got its slot(s) of %s after %.1f s",
                model.name,
                name,
                time.monotonic() - started,
            )
            _show_state("Running")
        yield


def _locked(exc: BaseException) -> bool:
    """Whether a refused acquisition means "all slots are held" (HTTP 423), not a failure."""
    import httpx

    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423

"""One Workspace per process and block choice, built from settings and, when named, from blocks."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mlstage.pipeline import Workspace

_lock = threading.Lock()
_cached: dict[tuple[str | None, str | None], Workspace] = {}
# The blocks a flow run chose; task threads inherit it (Prefect copies the context into them).
_selected: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "mlstage_blocks", default=(None, None)
)


@contextmanager
def using_blocks(shared_block: str | None, cache_block: str | None) -> Iterator[None]:
    """Make ``workspace()`` (without arguments) use these blocks inside the ``with``."""
    token = _selected.set((shared_block, cache_block))
    try:
        yield
    finally:
        _selected.reset(token)


def workspace(shared_block: str | None = None, cache_block: str | None = None) -> Workspace:
    """This process's Workspace: built once per block choice, shared by every task thread.

    With no block names it comes from MLSTAGE_* settings alone (no Prefect API needed); a named
    ``mlstage-shared-tier`` or ``mlstage-cache-settings`` block replaces that part. Without
    arguments: the blocks chosen by the enclosing ``using_blocks`` (none outside one).
    """
    key = (shared_block, cache_block)
    if key == (None, None):
        key = _selected.get()
    shared_block, cache_block = key
    with _lock:
        if key not in _cached:
            ws = Workspace.from_settings()
            if shared_block:
                from blocks import SharedTierBlock

                ws = dataclasses.replace(ws, shared=SharedTierBlock.load(shared_block).build())
            if cache_block:
                from blocks import CacheSettings

                block = CacheSettings.load(cache_block)
                settings = ws.settings.model_copy(
                    update={"workers": block.workers, "part_size": block.part_size}
                )
                ws = dataclasses.replace(ws, cache=block.build(), settings=settings)
            _cached[key] = ws
        return _cached[key]


def load_secret(block_name: str) -> str:
    """The value of the Prefect Secret block ``block_name``, as text: what a model's
    ``secrets`` name (``pipeline.run`` calls this right before the model's entrypoint)."""
    import json

    from prefect.blocks.system import Secret

    # the stored value itself: Secret.get() would turn the text "123" into the number 123
    value = Secret.load(block_name).value.get_secret_value()
    return value if isinstance(value, str) else json.dumps(value)


@contextmanager
def clearml_configured(clearml_block: str | None) -> Iterator[None]:
    """Inside the ``with``, the ClearML SDK of this process uses the server and keys of the
    ``mlstage-clearml-credentials`` block ``clearml_block`` (nothing changes without one).

    Set in-process, under a lock other tasks wait on (``ClearMLServer.configured``): never in
    ``os.environ``, which concurrent tasks would race on and model subprocesses inherit.
    """
    if not clearml_block:
        yield
        return
    from blocks import ClearMLCredentials

    with ClearMLCredentials.load(clearml_block).build().configured():
        yield


def reset_workspace() -> None:
    """Forget the cached Workspaces (settings changed, e.g. in tests)."""
    with _lock:
        _cached.clear()

"""One Workspace per process, built from settings (and, when given, from blocks)."""

from __future__ import annotations

import threading

from mlstage.pipeline import Workspace

_lock = threading.Lock()
_cached: Workspace | None = None


def workspace() -> Workspace:
    """The Workspace of this process: built once, shared by every task thread."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = Workspace.from_settings()
        return _cached


def reset_workspace() -> None:
    """Forget the cached Workspace (settings changed, e.g. in tests)."""
    global _cached
    with _lock:
        _cached = None

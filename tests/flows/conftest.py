"""Flow tests: each starts from a fresh Workspace (settings differ per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fresh_workspace() -> Iterator[None]:
    from flows._workspace import reset_workspace

    reset_workspace()
    yield
    reset_workspace()

"""Which ClearML server, with which keys, the ClearML SDK of this process talks to.

``clearml://`` datasets are resolved through the SDK (``Dataset.get``), which reads its server
and keys from the environment, then ``clearml.conf``. Putting a block's keys into
``os.environ`` raced between concurrent tasks and leaked them into every model subprocess, so
a ``ClearMLServer`` configures the SDK in-process instead: ClearML's own configuration
overrides (``clearml.config.ConfigWrapper.set_overrides``, which outrank clearml.conf), under
one lock held while the SDK is used. ``Task.set_credentials`` is not used: it also writes the
keys into ``os.environ`` (``CLEARML_API_ACCESS_KEY``, ...), and its defaults rank below
clearml.conf. CLEARML_* variables set on the node still win, as ClearML ranks them first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# One SDK configuration per process: held while it is set and while the SDK uses it.
_LOCK = threading.RLock()
_applied: list[ClearMLServer | None] = [None]  # the server configured last, if any


@dataclass(frozen=True)
class ClearMLServer:
    """A ClearML API server and the keys to use it (the secret is kept out of ``repr``)."""

    api_host: str
    access_key: str
    secret_key: str = field(repr=False)
    web_host: str | None = None
    files_host: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The ``api`` section of ClearML's configuration this server amounts to (it holds the
        secret: never log it)."""
        api: dict[str, Any] = {
            "api_server": self.api_host,
            "credentials": {"access_key": self.access_key, "secret_key": self.secret_key},
        }
        if self.web_host:
            api["web_server"] = self.web_host
        if self.files_host:
            api["files_server"] = self.files_host
        return {"api": api}

    @contextmanager
    def configured(self) -> Iterator[None]:
        """Inside the ``with``, the ClearML SDK of this process talks to this server with these
        keys, and no other thread can point it elsewhere. The configuration stays afterwards
        (as with ClearML's own ``Task.set_credentials``), until another server is configured.
        """
        with _LOCK:
            self._apply()
            yield

    def _apply(self) -> None:
        from clearml.backend_interface.base import InterfaceBase
        from clearml.config import ConfigWrapper

        ConfigWrapper.set_overrides(self.overrides())
        if _applied[0] != self:
            # the SDK keeps one default session, logged in with the keys of its time: the
            # next call makes a new one with these
            InterfaceBase._default_session = None
            _applied[0] = self

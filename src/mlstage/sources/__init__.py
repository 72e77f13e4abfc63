"""Sources by URI scheme: ``open_source(uri)`` picks the implementation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from mlstage.errors import ConfigError
from mlstage.sources.base import FileObjectSource, RemoteObject, Source

SourceFactory = Callable[[str], Source]
_REGISTRY: dict[str, SourceFactory] = {}


def register(scheme: str, factory: SourceFactory) -> None:
    """Make ``scheme://...`` URIs open with ``factory``."""
    _REGISTRY[scheme] = factory


def _folder(uri: str) -> Source:
    """A folder, by path or ``file://`` URI. Its identity (versions, cache keys) is the absolute
    path, so ``data``, ``./data/``, ``file:///abs/data`` and ``/abs/x/../data`` are one dataset."""
    from mlstage.sources.local import FolderSource

    raw = urlparse(uri).path if uri.startswith("file://") else uri
    if not raw.strip():
        raise ConfigError(
            f"empty dataset URI {uri!r}",
            hint="give a folder path (e.g. ./data) or a URI such as s3://bucket/prefix",
        )
    path = Path(os.path.abspath(Path(raw).expanduser()))
    return FolderSource(path, uri=str(path))


def _lazy(module: str, attr: str) -> SourceFactory:
    def factory(uri: str) -> Source:
        import importlib

        return getattr(importlib.import_module(module), attr)(uri)

    return factory


register("file", _folder)
register("", _folder)
register("s3", _lazy("mlstage.sources.s3", "from_uri"))
register("http", _lazy("mlstage.sources.http", "from_uri"))
register("https", _lazy("mlstage.sources.http", "from_uri"))
register("clearml", _lazy("mlstage.sources.clearml", "from_uri"))
register("clearml+s3", _lazy("mlstage.sources.clearml", "from_uri"))
register("clearml+file", _lazy("mlstage.sources.clearml", "from_uri"))


def scheme_of(uri: str) -> str:
    parsed = urlparse(uri)
    # a Windows drive letter or a bare path has no real scheme
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def open_source(uri: str) -> Source:
    """The Source for ``uri``; ConfigError names the URI when no source handles it."""
    scheme = scheme_of(uri)
    factory = _REGISTRY.get(scheme)
    if factory is None:
        known = ", ".join(sorted(s + "://" for s in _REGISTRY if s))
        raise ConfigError(f"no source handles {uri!r}", hint=f"use a folder path or one of {known}")
    return factory(uri)


def check_uri(uri: str) -> None:
    """Fail fast, without I/O, when no source handles ``uri``."""
    if scheme_of(uri) not in _REGISTRY:
        open_source(uri)


__all__ = ["FileObjectSource", "RemoteObject", "Source", "check_uri", "open_source", "register"]

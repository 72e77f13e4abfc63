"""Sources by URI scheme: ``open_source(uri)`` picks the implementation.

Every URI goes through ``check_uri`` first, the one place that refuses what no source may be
given, whatever its scheme: credentials in the URI (``user:secret@``), a fragment (``#...``),
and a query where the scheme takes none (everything but http(s)). Each is refused without
repeating it: what a URI carries is written to the cache index, manifests, the state DB and
logs. A folder given as a plain path is a path, not a URI: ``?`` and ``#`` are characters of
its name there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlparse, urlsplit

from mlstage.errors import ConfigError
from mlstage.redact import scrub_uri
from mlstage.sources.base import FileObjectSource, RemoteObject, Source

SourceFactory = Callable[[str], Source]
_REGISTRY: dict[str, SourceFactory] = {}
# Schemes whose URIs may carry a query (HttpSource refuses the secret-looking keys in it).
_QUERY_SCHEMES: set[str] = set()


def register(scheme: str, factory: SourceFactory, *, takes_query: bool = False) -> None:
    """Make ``scheme://...`` URIs open with ``factory``; ``takes_query``: its URIs may carry a
    ``?query`` (the factory then refuses what it must not keep), else one is refused."""
    _REGISTRY[scheme] = factory
    if takes_query:
        _QUERY_SCHEMES.add(scheme)


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
register("http", _lazy("mlstage.sources.http", "from_uri"), takes_query=True)
register("https", _lazy("mlstage.sources.http", "from_uri"), takes_query=True)
register("clearml", _lazy("mlstage.sources.clearml", "from_uri"))
register("clearml+s3", _lazy("mlstage.sources.clearml", "from_uri"))
register("clearml+file", _lazy("mlstage.sources.clearml", "from_uri"))


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

# How to hand each scheme's credentials over instead of writing them into the URI.
_AWS = (
    "S3 credentials come from the AWS environment (AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY) or a Prefect block (prefect-aws AwsCredentials)"
)
_CLEARML = (
    "ClearML credentials come from ClearML's own configuration (clearml.conf, or "
    "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY) or an mlstage-clearml-credentials block"
)
_NETRC = "put the credentials for this host in ~/.netrc (or the file $NETRC names)"
_FILES = "a folder needs no credentials (its permissions decide): write {scheme}:///abs/path"
CREDENTIALS_HINTS = {
    "s3": _AWS,
    "clearml+s3": _AWS,
    "clearml": _CLEARML,
    "clearml+file": _FILES,
    "file": _FILES,
    "http": _NETRC,
    "https": _NETRC,
}


def credentials_hint(scheme: str) -> str:
    """Where the credentials of a ``scheme://`` source go, since never into its URI."""
    hint = CREDENTIALS_HINTS.get(scheme, "pass the credentials outside the URI")
    return hint.format(scheme=scheme)


def scheme_of(uri: str) -> str:
    """The URI's scheme, lowercase; "" for a folder path (a one-letter scheme is no scheme)."""
    try:
        scheme = urlsplit(uri).scheme
    except ValueError:  # a malformed host ('[::1'); the scheme before it is still plain
        m = _SCHEME.match(uri.strip())
        scheme = m.group(1).lower() if m else ""
    return scheme if len(scheme) > 1 else ""


def _split(uri: str) -> SplitResult:
    """``urlsplit(uri)``, with a port that can be read; a ConfigError names a malformed URI."""
    try:
        parts = urlsplit(uri)
        if "{" not in parts.netloc:  # braces (http shard lists) are checked once expanded
            parts.port  # noqa: B018 - a bad port raises only when read
    except ValueError as exc:
        raise ConfigError(
            f"{scrub_uri(uri)}: not a valid URI ({exc})",
            hint="check the host (an IPv6 address goes in brackets: http://[::1]:8000/x) "
            "and the port",
        ) from exc
    return parts


def check_uri(uri: str) -> None:
    """Fail fast, without I/O, on a URI no source takes as it is (ConfigError, one line).

    Refused: a scheme no source handles; a malformed URI; credentials (``user:secret@``), with
    a hint saying where this scheme's credentials go instead; a fragment (``#...``: no source
    reads one, and whatever it carries would be stored with the dataset); a query, except in
    http(s) URLs (S3, ClearML and file URIs would silently ignore it). The message shows the
    URI without its userinfo, query and fragment, so nothing refused is repeated.
    """
    scheme = scheme_of(uri)
    if scheme not in _REGISTRY:
        known = ", ".join(sorted(s + "://" for s in _REGISTRY if s))
        raise ConfigError(
            f"no source handles {scrub_uri(uri)!r}", hint=f"use a folder path or one of {known}"
        )
    if not scheme:  # a folder path: every character is part of its name
        return
    parts = _split(uri)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if "@" in parts.netloc:
        raise ConfigError(
            f"{shown}: credentials do not belong in the URI (refused, not used)",
            hint=credentials_hint(scheme),
        )
    if "#" in uri:
        raise ConfigError(
            f"{shown}: refusing the URI's fragment ('#...'): no source reads one, and what it "
            "holds would be stored with the dataset",
            hint=f"remove the '#...' part; {credentials_hint(scheme)}",
        )
    if "?" in uri and scheme not in _QUERY_SCHEMES:
        raise ConfigError(
            f"{shown}: refusing the URI's query ('?...'): {scheme}:// URIs take none, so it "
            "would be ignored",
            hint=f"remove the '?...' part; {credentials_hint(scheme)}",
        )


def open_source(uri: str) -> Source:
    """The Source for ``uri``, once ``check_uri`` accepts it (ConfigError names it otherwise)."""
    check_uri(uri)
    return _REGISTRY[scheme_of(uri)](uri)


__all__ = [
    "CREDENTIALS_HINTS",
    "FileObjectSource",
    "RemoteObject",
    "Source",
    "check_uri",
    "credentials_hint",
    "open_source",
    "register",
    "scheme_of",
]

"""HTTP(S) shard lists: ``https://host/path/shards-{000..099}.tar`` (WebDataset-style braces).

``resolve`` expands the braces and sends one HEAD per URL (concurrently): size, ETag and
whether the server honours ranges. Paths are the URLs relative to their common folder, so
``https://h/d/{train,val}/s-{0..1}.tar`` stages as ``train/s-0.tar``, ``val/s-1.tar``, ...
Reads are conditional on the ETag and ranged where the server supports it.

These URLs stay on httpx rather than obstore's HTTPStore (the object-store layer,
``mlstage.store``, is S3's): HTTPStore refuses a ``200`` answer to a ranged GET, which plain
web servers and CDNs send, and reads no ``~/.netrc``. Timeouts match the store's: 10 s to
connect, MLSTAGE_READ_TIMEOUT (20 s) of silence, none for a whole transfer.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from mlstage.errors import (
    AccessDenied,
    ConfigError,
    EndpointTimeout,
    ObjectNotFound,
    SourceError,
    TransientError,
)
from mlstage.manifest import Entry, Manifest
from mlstage.paths import safe_relpath
from mlstage.redact import is_secret_pair, scrub_uri
from mlstage.retry import RetryPolicy, gave_up
from mlstage.sources.base import FileObjectSource, RemoteObject

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_CHUNK = 1024 * 1024
MAX_URLS = 1_000_000
_HUGE = 10**15  # counts beyond this are not worth spelling out
CONNECT_TIMEOUT = 10.0
# Without an ETag the listed version is the Last-Modified date, kept in Entry.etag behind this
# prefix (an ETag never holds a space, so the two cannot be confused).
LAST_MODIFIED = "last-modified "


def _shown(pattern: str) -> str:
    """``pattern`` for an error message: no credentials, and short enough for one line."""
    shown = scrub_uri(pattern)
    return shown if len(shown) <= 120 else f"{shown[:100]}... ({len(shown)} characters)"


def _brace_groups(pattern: str) -> tuple[list[str], list[tuple[int, Iterable[str]]]]:
    """The literal text around each ``{...}`` of ``pattern`` and, per group, how many options it
    has and (lazily: nothing is built until it is iterated) what they are."""
    literals: list[str] = []
    groups: list[tuple[int, Iterable[str]]] = []
    pos = 0
    for m in _BRACE.finditer(pattern):
        body = m.group(1)
        rng = _RANGE.match(body)
        if rng:
            lo, hi = rng.group(1), rng.group(2)
            width = len(lo) if lo.lstrip("-").startswith("0") and len(lo) > 1 else 0
            try:
                a, b = int(lo), int(hi)
            except ValueError as exc:  # more digits than Python converts
                raise ConfigError(
                    f"cannot expand {{{body[:40]}}} in {_shown(pattern)}: the bounds are too long",
                    hint="use {a,b,c} or {000..099}",
                ) from exc
            step = 1 if b >= a else -1
            options: Iterable[str] = (str(i).zfill(width) for i in range(a, b + step, step))
            groups.append((abs(b - a) + 1, options))
        elif "," in body:
            groups.append((body.count(",") + 1, body.split(",")))
        else:
            raise ConfigError(
                f"cannot expand {{{body[:40]}}} in {_shown(pattern)}",
                hint="use {a,b,c} or {000..099}",
            )
        literals.append(pattern[pos : m.start()])
        pos = m.end()
    literals.append(pattern[pos:])
    return literals, groups


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..099}`` ranges (zero-padded like the bounds), in order.

    The URLs are counted first, from the groups' sizes: a pattern of more than MAX_URLS is
    refused before a single URL is built (``{0..999}{0..999}{0..9}`` would take a gigabyte).
    """
    literals, groups = _brace_groups(pattern)
    count = 1
    for n, _options in groups:
        count *= n
        if count > _HUGE:
            break
    if count > MAX_URLS:
        said = f"{count:,}" if count <= _HUGE else f"more than {_HUGE:,}"
        raise ConfigError(
            f"{_shown(pattern)} expands to {said} URLs, more than the {MAX_URLS:,} of a dataset",
            hint=f"split it into several datasets, each a pattern of at most {MAX_URLS:,} URLs",
        )
    if not groups:
        return [pattern]
    out = []
    for choice in itertools.product(*(options for _n, options in groups)):
        parts = [literals[0]]
        for option, literal in zip(choice, literals[1:], strict=True):
            parts += [option, literal]
        out.append("".join(parts))
    return out


def _relative_paths(urls: list[str], origin: str) -> list[str]:
    paths = [urlsplit(u).path for u in urls]
    if len(paths) == 1:
        common = paths[0].rsplit("/", 1)[0] + "/"
    else:
        common = paths[0]
        for p in paths[1:]:
            while not p.startswith(common):
                common = common[:-1]
        common = common[: common.rfind("/") + 1]
    return [safe_relpath(p[len(common) :], origin=origin) for p in paths]


def _not_a_url(pattern: str, exc: ValueError) -> ConfigError:
    return ConfigError(
        f"{_shown(pattern)}: not a valid URL ({exc})",
        hint="check the host (an IPv6 address goes in brackets: http://[::1]:8000/x) and the port",
    )


def _path_of(url: str, pattern: str) -> str:
    """The path of ``url``, one of ``pattern``'s: ConfigError when a brace made it malformed
    (``https://{[::1],[::1}/x`` gives ``https://[::1/x``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises only when read
    except ValueError as exc:
        raise _not_a_url(pattern, exc) from exc
    return parts.path


def _changed(url: str, why: str = "") -> SourceError:
    return SourceError(
        f"{url}: the file changed since the dataset was resolved{why}; re-resolve",
        hint="re-resolve the dataset and stage the new version",
    )


def _netrc_auth() -> Any:
    """httpx does not read ~/.netrc by itself: hand it over when there is one (or $NETRC)."""
    import netrc
    import os
    from pathlib import Path

    import httpx

    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        return httpx.NetRCAuth(str(path))
    except (OSError, netrc.NetrcParseError) as exc:
        raise ConfigError(
            f"{path}: cannot read it ({exc})", hint="fix the netrc file or its permissions"
        ) from exc


def _map_status(status: int, url: str, what: str) -> Exception:
    if status == 404 or status == 410:
        return ObjectNotFound(
            f"{url}: {what}: HTTP {status}", hint="check the URL and the shard range"
        )
    if status in (401, 403):
        return AccessDenied(
            f"{url}: {what}: HTTP {status}",
            hint="the server refused; put credentials for this host in ~/.netrc",
        )
    if status == 412:
        return _changed(url)
    if status == 429 or status >= 500:
        return TransientError(f"{url}: {what}: HTTP {status}")
    return SourceError(f"{url}: {what}: unexpected HTTP {status}")


def _secret_query_keys(path: str, query: str) -> list[str]:
    """The keys that hold credentials (X-Amz-Signature, token, sig, ...) in the query or in
    a path segment's ``;name=value`` parameters."""
    pairs = [p for seg in path.split("/") for p in seg.split(";")[1:]]
    pairs += re.split(r"[&;]", query)
    return [unquote_plus(p.split("=", 1)[0]) for p in pairs if p and is_secret_pair(p)]


class HttpSource(FileObjectSource):
    """A fixed list of URLs (shards), fetched as files."""

    def __init__(
        self,
        pattern: str,
        *,
        client: Any | None = None,
        retry: RetryPolicy | None = None,
        workers: int = 16,
        read_timeout: float | None = None,
    ) -> None:
        """``read_timeout``: seconds of silence before a request times out (default:
        MLSTAGE_READ_TIMEOUT)."""
        try:
            parts = urlsplit(pattern)
        except ValueError as exc:
            raise _not_a_url(pattern, exc) from exc
        if parts.username or parts.password:
            raise ConfigError(
                "credentials do not belong in a URL", hint="put them in ~/.netrc for this host"
            )
        signed = _secret_query_keys(parts.path, parts.query)
        if signed:  # kept, they would be written to the cache index, manifests and logs
            raise ConfigError(
                f"{scrub_uri(pattern)}: the URL carries credentials ({signed[0]}=...)",
                hint="a signed URL expires and names no stable dataset: stage the objects by "
                "s3:// (AWS credentials from the environment or a block) or serve them unsigned",
            )
        self.uri = pattern
        self.urls = expand_braces(pattern)
        unnamed = [
            u for u in self.urls if _path_of(u, pattern).endswith("/") or not _path_of(u, pattern)
        ]
        if unnamed:
            raise ConfigError(
                f"{_shown(unnamed[0])}: names no file",
                hint="an HTTP dataset is a list of file URLs, e.g. "
                "https://host/shards/train-{000000..000099}.tar",
            )
        self.paths = _relative_paths(self.urls, pattern)
        self.retry = retry or RetryPolicy()
        self.workers = workers
        if read_timeout is None:
            from mlstage.settings import get_settings

            read_timeout = get_settings().read_timeout
        self.read_timeout = read_timeout
        self.supports_ranges = False
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    auth=_netrc_auth(),
                    follow_redirects=True,
                    # read/write: silence between two reads; pool: none (the engine's workers
                    # never outnumber the connections); no limit on a whole transfer
                    timeout=httpx.Timeout(
                        connect=CONNECT_TIMEOUT,
                        read=self.read_timeout,
                        write=self.read_timeout,
                        pool=None,
                    ),
                    limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
                )
            return self._client

    def _head(self, url: str) -> tuple[int, str | None, bool]:
        import httpx

        try:
            r = self.client.head(url)
            if r.status_code == 405:  # no HEAD: ask for one byte instead
                r = self.client.get(url, headers={"Range": "bytes=0-0"})
                r.close()
        except httpx.ConnectError as exc:
            raise SourceError(
                f"{url}: cannot connect ({exc})", hint="check the host name, port and network"
            ) from exc
        except httpx.ConnectTimeout as exc:
            raise SourceError(
                f"{url}: cannot connect within {CONNECT_TIMEOUT:g} s",
                hint="check the host name, port and network",
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._timeout(url, "HEAD") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise TransientError(f"{url}: HEAD: {type(exc).__name__}") from exc
        if r.status_code not in (200, 206):
            raise _map_status(r.status_code, url, "HEAD")
        size: int | None = None
        cr = r.headers.get("Content-Range", "")
        if r.status_code == 206 and "/" in cr:
            size = int(cr.rsplit("/", 1)[1])
        elif "Content-Length" in r.headers:
            size = int(r.headers["Content-Length"])
        if size is None:
            raise SourceError(
                f"{url}: the server does not say how big the file is",
                hint="serve shards with Content-Length",
            )
        etag = r.headers.get("ETag")
        if etag and etag.startswith("W/"):
            etag = None  # weak tags cannot guard ranged reads
        etag = etag.strip('"') if etag else None
        if etag is None and r.headers.get("Last-Modified"):
            etag = LAST_MODIFIED + r.headers["Last-Modified"]
        ranges = r.headers.get("Accept-Ranges", "").lower() == "bytes" or r.status_code == 206
        return size, etag, ranges

    def resolve(self) -> Manifest:
        """One HEAD per URL, concurrently; no body is read."""
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mlstage-head")
        try:
            heads = list(pool.map(lambda u: self.retry.call(lambda: self._head(u)), self.urls))
        except TransientError as exc:
            raise gave_up(exc, "the server keeps failing; retry later") from exc
        finally:
            # after a failure (or SIGTERM) the HEADs still in flight are of no use
            pool.shutdown(wait=False, cancel_futures=True)
        self.supports_ranges = all(r for _s, _e, r in heads)
        entries = [
            Entry(path=path, size=size, etag=etag, locator=url)
            for url, path, (size, etag, _r) in zip(self.urls, self.paths, heads, strict=True)
        ]
        return Manifest(source=self.uri, entries=entries)

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        import httpx

        end = obj.size if end is None else end
        if end <= start:
            return
        url = obj.key
        headers = {}
        ranged = start > 0 or end < obj.size
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        if obj.etag and obj.etag.startswith(LAST_MODIFIED):
            headers["If-Unmodified-Since"] = obj.etag[len(LAST_MODIFIED) :]
        elif obj.etag:
            headers["If-Match"] = f'"{obj.etag}"'
        try:
            with self.client.stream("GET", url, headers=headers) as r:
                if r.status_code not in (200, 206):
                    raise _map_status(r.status_code, url, "GET")
                _check_total(r, url, obj.size)
                skip = start if ranged and r.status_code == 200 else 0  # range ignored
                full_body = r.status_code == 200 and end == obj.size  # nothing may follow
                want = end - start
                for chunk in r.iter_bytes(_CHUNK):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    if len(chunk) > want:
                        if full_body:
                            raise _changed(url, f": more than the {obj.size} bytes listed")
                        if want:
                            yield chunk[:want]
                        return
                    want -= len(chunk)
                    if chunk:
                        yield chunk
                    if want == 0 and not full_body:
                        return
                if want:
                    raise TransientError(f"{url}: GET: the body ended {want} bytes early")
        except httpx.TimeoutException as exc:
            raise self._timeout(url, "GET") from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"{url}: GET: {type(exc).__name__}") from exc

    def _timeout(self, url: str, what: str) -> EndpointTimeout:
        return EndpointTimeout(
            f"{url}: {what}: no answer within {self.read_timeout:g} s",
            hint="the server accepts connections but does not answer; check it, or raise "
            "MLSTAGE_READ_TIMEOUT",
        )


def _check_total(r: Any, url: str, listed: int) -> None:
    """Refuse a response whose file is not the size that was listed (it changed)."""
    total: int | None = None
    if r.status_code == 206:
        cr = r.headers.get("Content-Range", "")
        if "/" in cr and not cr.endswith("/*"):
            total = int(cr.rsplit("/", 1)[1])
    elif "Content-Length" in r.headers and "Content-Encoding" not in r.headers:
        total = int(r.headers["Content-Length"])
    if total is not None and total != listed:
        raise _changed(url, f": {total} bytes, {listed} listed")


def from_uri(uri: str) -> HttpSource:
    """The HttpSource for an http(s) URL pattern."""
    return HttpSource(uri)

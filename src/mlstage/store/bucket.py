"""One S3 bucket through obstore: list, read, write, delete; errors mapped, retries once.

``Bucket`` is the only code in mlstage that talks to S3. Listing pages stream in key order
and resume after the last key delivered when a page fails (S3's ``start-after``, obstore's
``offset``). Every object read is conditional on the ETag its listing gave (``If-Match``), so
a replaced object fails loudly (ObjectChanged) instead of mixing versions. Writes are whole
(``put``: multipart for big files, as obstore does) or conditional (``create_only``: S3's
``If-None-Match: *``).

Retries: obstore's own are off (its defaults retry each request for up to three minutes, and
would multiply ours); ``RetryPolicy`` retries what ``map_error`` calls transient. Whole calls
(``get``, ``put``, ``delete``, one level of ``children``) retry here; ``read`` streams one
attempt and leaves the retry to its caller (the transfer engine, which also verifies).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from mlstage.errors import MlstageError, ObjectNotFound, SourceError, TransientError
from mlstage.retry import RetryPolicy
from mlstage.store import ranges
from mlstage.store.config import StoreConfig
from mlstage.store.errors import RangesIgnored, map_error, parts

_CHUNK = 1024 * 1024  # bytes per chunk a read yields (the last may be shorter)
_PAGE = 1000  # objects per listing page, S3's maximum
T = TypeVar("T")


def interruptible(fn: Callable[[], T]) -> T:
    """``fn()``, which blocks in obstore; on the main thread it runs in a helper thread.

    CPython runs signal handlers only while the main thread executes bytecode, and a call into
    obstore keeps it in Rust until the endpoint answers or the read timeout passes (20 s by
    default): SIGTERM or Ctrl-C during a listing would wait that long. Waiting on an Event
    instead lets the handler run at once (the helper, a daemon, is abandoned). Other threads
    call ``fn`` directly.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="mlstage-store-call", daemon=True).start()
    done.wait()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


class Listed(NamedTuple):
    """One object as a listing names it; ``etag`` without quotes ('' if none)."""

    key: str
    size: int
    etag: str


def _etag(value: str | None) -> str:
    return (value or "").strip().removeprefix("W/").strip('"')


class Bucket:
    """One bucket of S3 or an S3-compatible store, as ``config`` reaches it."""

    def __init__(
        self, name: str, config: StoreConfig | None = None, *, retry: RetryPolicy | None = None
    ) -> None:
        self.name = name
        self.config = config if config is not None else StoreConfig.from_env()
        self.retry = retry or RetryPolicy()
        self._store: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bucket({self.name!r}, endpoint={self.config.where()!r})"

    def uri(self, key: str = "") -> str:
        """``s3://bucket/key``: how errors and logs name an object."""
        return f"s3://{self.name}/{key}"

    @property
    def store(self) -> Any:
        """The obstore store, made on first use (credentials are looked up then)."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = self.config.open(self.name)
                except MlstageError as exc:  # no credentials, a setting obstore refuses
                    raise type(exc)(f"{self.uri()}: {exc.message}", hint=exc.hint) from exc
            return self._store

    def _error(
        self, exc: BaseException, key: str, what: str, *, connect_transient: bool = False
    ) -> MlstageError:
        return map_error(
            exc,
            self.uri(key),
            what,
            where=self.config.where(),
            read_timeout=self.config.read_timeout,
            connect_transient=connect_transient,
        )

    # -- listing --------------------------------------------------------------------------
    def pages(
        self, prefix: str, *, offset: str | None = None, page: int = _PAGE
    ) -> Iterator[list[Listed]]:
        """Every object whose key starts with ``prefix`` (whole path segments: ``a/b`` holds
        ``a/b/c``, not ``a/bc``), a page at a time in key order, after ``offset`` if given.

        A transient failure resumes after the last key delivered, under the retry policy
        (its attempts count failures in a row); what is not transient is raised at once.
        """
        import obstore

        backoff = self.retry.backoff()
        last = offset
        while True:
            try:
                stream = obstore.list(self.store, prefix or None, offset=last, chunk_size=page)
                while (chunk := interruptible(lambda s=stream: next(s, None))) is not None:
                    listed = [Listed(o["path"], o["size"], _etag(o["e_tag"])) for o in chunk]
                    if listed:
                        last = listed[-1].key
                        backoff.progressed()
                        yield listed
                return
            except MlstageError:
                raise
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                err = self._error(exc, prefix, "listing")
                if not isinstance(err, TransientError):
                    raise err from exc
                backoff.failed(err)

    def children(self, prefix: str) -> tuple[list[Listed], list[str]]:
        """One level under ``prefix`` (ending in '/' or empty): its objects, and its common
        prefixes (each ending in '/'), in key order. obstore pages this listing internally,
        so a transient failure repeats it whole."""
        import obstore

        def attempt() -> tuple[list[Listed], list[str]]:
            try:
                found = interruptible(
                    lambda: obstore.list_with_delimiter(self.store, prefix.rstrip("/") or None)
                )
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                raise self._error(exc, prefix, "listing") from exc
            objects = [Listed(o["path"], o["size"], _etag(o["e_tag"])) for o in found["objects"]]
            return objects, [p.rstrip("/") + "/" for p in found["common_prefixes"]]

        return self.retry.call(attempt)

    # -- reads ----------------------------------------------------------------------------
    def head(self, key: str) -> Listed | None:
        """``key``'s size and ETag (a HEAD request), or None when it is not there; retried,
        and any other error raised."""
        import obstore

        def attempt() -> Listed | None:
            try:
                meta = interruptible(lambda: obstore.head(self.store, key))
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                err = self._error(exc, key, "HEAD", connect_transient=True)
                if isinstance(err, ObjectNotFound):
                    return None
                raise err from exc
            return Listed(key, meta["size"], _etag(meta["e_tag"]))

        return self.retry.call(attempt)

    def get(self, key: str, *, etag: str | None = None) -> bytes:
        """A small object's bytes (held in memory), retried; conditional on ``etag``."""
        import obstore

        options = {"if_match": f'"{etag}"'} if etag else None

        def attempt() -> bytes:
            try:
                return interruptible(
                    lambda: bytes(obstore.get(self.store, key, options=options).bytes())
                )
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                raise self._error(exc, key, "GET", connect_transient=True) from exc

        return self.retry.call(attempt)

    def read(
        self, key: str, start: int, end: int, *, size: int, etag: str | None
    ) -> Iterator[bytes]:
        """Bytes [start, end) of the object of ``size`` bytes listed with ``etag``: one
        attempt (the caller retries and verifies), conditional on the ETag when given.

        Against an endpoint that answers ranges with 200 (``ranges``) the whole object is
        read and the asked range kept: correct, never corrupt, and slower only there.
        """
        ranged = start > 0 or end < size
        if ranged and ranges.known(self.config.endpoint_id) is False:
            yield from self._slice_of_whole(key, start, end, etag)
            return
        try:
            yield from self._stream(key, etag, (start, end) if ranged else None)
        except RangesIgnored:
            ranges.note(self.config.endpoint_id, False, self.config.where())
            yield from self._slice_of_whole(key, start, end, etag)

    def _stream(
        self, key: str, etag: str | None, byte_range: tuple[int, int] | None
    ) -> Iterator[bytes]:
        import obstore

        options: dict[str, Any] = {}
        if etag:
            options["if_match"] = f'"{etag}"'
        if byte_range is not None:
            options["range"] = byte_range
        try:
            result = interruptible(lambda: obstore.get(self.store, key, options=options))
            stream = result.stream(min_chunk_size=_CHUNK)
            while (chunk := interruptible(lambda: next(stream, None))) is not None:
                yield chunk
        except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
            raise self._error(exc, key, "GET", connect_transient=True) from exc

    def _slice_of_whole(self, key: str, start: int, end: int, etag: str | None) -> Iterator[bytes]:
        """Bytes [start, end) cut out of a read of the whole object."""
        pos = 0
        for chunk in self._stream(key, etag, None):
            lo, hi = max(start - pos, 0), min(end - pos, len(chunk))
            pos += len(chunk)
            if lo < hi:
                yield chunk[lo:hi]
            if pos >= end:
                return

    def honours_ranges(self, key: str, etag: str | None) -> bool:
        """Whether this bucket's endpoint answers ranged GETs with 206 (asked once per
        endpoint and process with a one-byte GET of ``key``, which must exist)."""
        known = ranges.known(self.config.endpoint_id)
        if known is not None:
            return known
        try:
            for _chunk in self._stream(key, etag, (0, 1)):
                pass
        except RangesIgnored:
            ranges.note(self.config.endpoint_id, False, self.config.where())
            return False
        except MlstageError:
            return True  # cannot tell: ranged reads find out (and fall back) themselves
        ranges.note(self.config.endpoint_id, True, self.config.where())
        return True

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: str, data: bytes | Path, *, create_only: bool = False) -> bool:
        """Write ``data`` (bytes, or a file: multipart when large) at ``key``, retried.

        ``create_only``: only if no object is there (S3 ``If-None-Match: *``); False when one
        was. A store that does not implement conditional writes (501) gets a plain PUT: the
        last writer wins. Stores that ignore the header (rclone 1.75) overwrite silently.
        """
        import obstore
        from obstore.exceptions import AlreadyExistsError

        mode = "create" if create_only else "overwrite"

        def attempt(mode: str) -> bool:
            try:
                interruptible(lambda: obstore.put(self.store, key, data, mode=mode))  # type: ignore[arg-type]
                return True
            except AlreadyExistsError:
                return False
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                if mode == "create" and parts(exc)[0] == 501:
                    raise _NoConditionalPut from exc
                raise self._error(exc, key, "PUT", connect_transient=True) from exc

        try:
            return self.retry.call(lambda: attempt(mode))
        except _NoConditionalPut:
            return self.retry.call(lambda: attempt("overwrite"))

    def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` (bulk requests where the store has them), retried."""
        import obstore

        if not keys:
            return

        def attempt() -> None:
            try:
                interruptible(lambda: obstore.delete(self.store, keys))
            except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped here
                raise self._error(exc, keys[0], "DELETE", connect_transient=True) from exc

        self.retry.call(attempt)


class _NoConditionalPut(SourceError):
    """The store answered 501 to a conditional PUT."""

    def __init__(self) -> None:
        super().__init__("conditional PUT not implemented")

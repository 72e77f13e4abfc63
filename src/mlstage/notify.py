"""Pushed changes: S3 event notifications turned into the same settled changes as polling.

S3 (and S3-compatible stores such as MinIO) post a JSON body ``{"Records": [{"eventName":
"ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``, possibly
wrapped in an SNS envelope (``{"Type": "Notification", "Message": "<that JSON>"}``) or sent via
EventBridge (``{"detail-type": "Object Created", "detail": {"bucket": {"name": ...},
"object": {"key": ...}}}``). A notification only says *that* something changed under a
watched prefix: the dataset is then re-resolved by the ``Watcher``, so the event carries the
real version and a burst of notifications still settles into one change.

``Debouncer`` coalesces a burst on the receiving side: a dataset is checked once it has had
no notification for ``quiet_seconds``. ``Receiver`` is the small HTTP server around both.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote_plus

from mlstage.errors import ConfigError
from mlstage.redact import scrub_text
from mlstage.sources import scheme_of
from mlstage.watch import Change, WatchEntry, Watcher, WatchList

log = logging.getLogger("mlstage.notify")

MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class S3Notice:
    """One object event: which bucket and (decoded) key, and what happened to it."""

    bucket: str
    key: str
    event_name: str


def _records(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [r for d in doc for r in _records(d)]
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("Records"), list):
        return [r for r in doc["Records"] if isinstance(r, dict)]
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        try:
            return _records(json.loads(doc["Message"]))
        except ValueError:
            return []
    detail = doc.get("detail")
    if isinstance(detail, dict) and "bucket" in detail and "object" in detail:
        return [
            {
                "eventName": str(doc.get("detail-type", "")),
                "s3": {"bucket": detail["bucket"], "object": detail["object"]},
            }
        ]
    return []


def parse_notification(body: str | bytes | dict[str, Any] | list[Any]) -> list[S3Notice]:
    """Every object event in an S3 notification body (plain, SNS-wrapped or EventBridge).

    Test events (``s3:TestEvent``) and records without a bucket or key are skipped; a body
    that is not JSON at all is a ConfigError.
    """
    if isinstance(body, str | bytes):
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ConfigError(
                "an S3 event notification must be JSON",
                hint='expected {"Records": [{"s3": {"bucket": ..., "object": ...}}]}',
            ) from exc
    else:
        doc = body
    out: list[S3Notice] = []
    for rec in _records(doc):
        s3 = rec.get("s3")
        if not isinstance(s3, dict):
            continue
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if not bucket or key is None:
            continue
        # keys arrive URL-encoded, spaces as '+'
        out.append(S3Notice(str(bucket), unquote_plus(str(key)), str(rec.get("eventName", ""))))
    return out


def _prefix(entry: WatchEntry) -> tuple[str, str] | None:
    if scheme_of(entry.dataset.uri) != "s3":
        return None
    from mlstage.sources.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(entry.dataset.uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def match(notices: Iterable[S3Notice], entries: Iterable[WatchEntry]) -> list[WatchEntry]:
    """The watched datasets (S3 URIs) that contain at least one of ``notices``' keys."""
    notices = list(notices)
    hit: list[WatchEntry] = []
    for entry in entries:
        where = _prefix(entry)
        if where is None:
            continue
        bucket, prefix = where
        if any(n.bucket == bucket and n.key.startswith(prefix) for n in notices):
            hit.append(entry)
    return hit


class Debouncer:
    """Coalesces bursts: a key is due once ``quiet_seconds`` passed since its last ``touch``."""

    def __init__(self, quiet_seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, key: str) -> None:
        """Something happened to ``key``: (re)start its quiet period."""
        with self._lock:
            self._last[key] = self.clock()

    def due(self) -> list[str]:
        """The keys that have been quiet long enough; each is returned once per burst."""
        now = self.clock()
        with self._lock:
            ready = [k for k, t in self._last.items() if now - t >= self.quiet_seconds]
            for k in ready:
                del self._last[k]
        return ready

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)


def handle(
    body: str | bytes | dict[str, Any],
    watchlist: WatchList,
    watcher: Watcher,
    *,
    confirm: bool = True,
) -> tuple[list[WatchEntry], list[Change], list[str]]:
    """One notification, at once: (matched entries, settled changes, still-settling names)."""
    entries = match(parse_notification(body), watchlist.datasets)
    report = watcher.check(entries, confirm=confirm)
    return entries, report.changes, report.pending


class Receiver:
    """An HTTP endpoint for S3 event notifications: POST the body to any path.

    Each POST is matched against the watch list and answered at once (202 with the matched
    dataset names); the datasets are checked in the background once quiet for
    ``quiet_seconds``, and each settled change goes to ``on_change`` (the CLI emits the
    Prefect event there). A dataset still settling is checked again after the next quiet
    period, so the final state of a burst is always announced.
    """

    def __init__(
        self,
        watchlist: WatchList,
        watcher: Watcher,
        on_change: Callable[[Change], None],
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        quiet_seconds: float = 2.0,
        tick_seconds: float = 0.2,
    ) -> None:
        self.watchlist = watchlist
        self.watcher = watcher
        self.on_change = on_change
        self.debouncer = Debouncer(quiet_seconds)
        self.tick_seconds = tick_seconds
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(413, {"error": "body too large"})
                    return
                body = self.rfile.read(length)
                try:
                    entries = match(parse_notification(body), receiver.watchlist.datasets)
                except ConfigError as exc:
                    self._reply(400, {"error": str(exc)})
                    return
                for e in entries:
                    receiver.debouncer.touch(e.name)
                self._reply(202, {"datasets": [e.name for e in entries]})

            def do_GET(self) -> None:  # noqa: N802
                self._reply(200, {"ok": True, "settling": len(receiver.debouncer)})

            def _reply(self, code: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug(format, *args)

        return Handler

    def _checker(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            names = self.debouncer.due()
            if not names:
                continue
            try:
                entries = [self.watchlist.entry(n) for n in names]
                report = self.watcher.check(entries, confirm=True)
            except Exception as exc:  # noqa: BLE001 - keep checking; the next notice retries
                log.error(
                    "checking %s failed: %s",
                    ", ".join(names),
                    scrub_text(f"{type(exc).__name__}: {exc}"),
                )
                continue
            for change in report.changes:
                try:
                    self.on_change(change)
                except (
                    Exception
                ) as exc:  # keep receiving; the next change is announced all the same
                    log.error(
                        "announcing %s failed: %s",
                        change.dataset,
                        scrub_text(f"{type(exc).__name__}: {exc}"),
                    )
            for name in report.pending:
                self.debouncer.touch(name)
            for name, err in report.errors.items():
                log.error("%s: %s", name, scrub_text(err))

    def start(self) -> Receiver:
        """Serve and check in background threads; returns self."""
        for target in (self.server.serve_forever, self._checker):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving and checking."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self._threads:
            t.join(timeout=10)

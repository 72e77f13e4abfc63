"""HTTP shard lists against local HTTP servers: one with ranges and ETags, one without."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import ObjectNotFound, SourceError
from mlstage.retry import RetryPolicy
from mlstage.sources import open_source
from mlstage.sources.http import HttpSource

pytestmark = pytest.mark.integration
MB = 1024 * 1024
FAST = RetryPolicy(attempts=5, base_seconds=0.005, max_seconds=0.02)


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with Accept-Ranges, ETag and single byte ranges, like nginx or S3."""

    protocol_version = "HTTP/1.1"
    seen: Counter[str]
    ranges: list[str]
    fail_next: list[int]

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        p = Path(self.directory) / self.path.lstrip("/").split("?")[0]
        return p if p.is_file() else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.seen[f"{self.command} {self.path}"] += 1
        p = self._file()
        if p is None:
            self.send_error(404)
            return
        if self.fail_next and body:
            self.send_error(self.fail_next.pop())
            return
        data = p.read_bytes()
        etag = hashlib.md5(data).hexdigest()
        if self.headers.get("If-Match", etag).strip('"') != etag:
            self.send_error(412)
            return
        status, start, end = 200, 0, len(data)
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if m:
            self.ranges.append(self.headers["Range"])
            status, start, end = 206, int(m.group(1)), min(len(data), int(m.group(2)) + 1)
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])


class PlainHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "data").mkdir()
    for i in range(5):
        (root / "data" / f"shard-{i:03d}.tar").write_bytes(os.urandom(10_000 + i))
    (root / "data" / "shard-005.tar").write_bytes(os.urandom(3 * MB + 7))
    return root


def _serve(handler: type, root: Path) -> Iterator[tuple[str, type]]:
    cls = type("H", (handler,), {"seen": Counter(), "ranges": [], "fail_next": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(cls, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cls
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ranged(shards: Path) -> Iterator[tuple[str, type]]:
    yield from _serve(RangeHandler, shards)


@pytest.fixture(scope="module")
def plain(shards: Path) -> Iterator[tuple[str, type]]:
    yield from _serve(PlainHandler, shards)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_brace_shards_with_ranged_parallel_reads(
    ranged: tuple[str, type], shards: Path, tmp_path: Path
) -> None:
    url, handler = ranged
    handler.fail_next[:] = [503, 500]  # two failures, retried
    source = open_source(f"{url}/data/shard-{{000..005}}.tar")
    source.retry = FAST  # type: ignore[attr-defined]
    manifest = source.resolve()
    assert [e.path for e in manifest.entries] == [f"shard-{i:03d}.tar" for i in range(6)]
    assert source.supports_ranges
    # 8 workers and one large shard: ranged parts pay off (Transfer._splitter), so they are used
    staged = LocalCache(tmp_path / "cache").stage(
        source, manifest, workers=8, part_size=MB, retry=FAST
    )
    assert _tree(staged.path) == _tree(shards / "data")
    assert len([r for r in handler.ranges if r]) >= 4  # the 3 MB shard came in 1 MB parts
    assert staged.retries >= 2
    # re-resolve: HEADs only, and the same version
    gets = sum(n for k, n in handler.seen.items() if k.startswith("GET"))
    assert source.resolve().fingerprint == manifest.fingerprint
    assert sum(n for k, n in handler.seen.items() if k.startswith("GET")) == gets


def test_server_without_ranges_still_works(
    plain: tuple[str, type], shards: Path, tmp_path: Path
) -> None:
    url, _ = plain
    source = HttpSource(f"{url}/data/shard-{{000..005}}.tar", retry=FAST)
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(source, manifest, workers=4, part_size=MB)
    assert _tree(staged.path) == _tree(shards / "data")


def test_missing_shard_and_dead_host_name_the_url(ranged: tuple[str, type], tmp_path: Path) -> None:
    url, _ = ranged
    with pytest.raises(ObjectNotFound, match=r"shard-006.tar: HEAD: HTTP 404"):
        HttpSource(f"{url}/data/shard-{{004..009}}.tar", retry=FAST).resolve()
    with pytest.raises(SourceError, match="cannot connect"):
        HttpSource("http://127.0.0.1:9/data/shard-{0..1}.tar", retry=FAST).resolve()


class LastModifiedHandler(PlainHandler):
    """No ETag, like python -m http.server; honours If-Unmodified-Since (412) like nginx."""

    seen_ius: list[str]

    def send_head(self):  # type: ignore[no-untyped-def]
        ius = self.headers.get("If-Unmodified-Since")
        if ius is not None:
            self.seen_ius.append(ius)
            p = Path(self.translate_path(self.path))
            if p.is_file() and int(p.stat().st_mtime) > parsedate_to_datetime(ius).timestamp():
                self.send_error(412)
                return None
        return super().send_head()


serving = contextlib.contextmanager(_serve)


def test_servers_without_etags_never_share_a_version(tmp_path: Path) -> None:
    # same name, same size, different bytes, no ETag: two datasets, two cache entries
    cache = LocalCache(tmp_path / "cache")
    staged = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "s-0.tar").write_bytes(name.encode() * 1000)
        with serving(PlainHandler, tmp_path / name) as (url, _h):
            source = HttpSource(f"{url}/s-{{0..0}}.tar", retry=FAST)
            staged.append(cache.stage(source, source.resolve(), workers=2, part_size=MB))
    assert staged[0].fingerprint != staged[1].fingerprint
    assert not staged[1].hit
    assert (staged[1].path / "s-0.tar").read_bytes() == b"two" * 1000


def test_no_etag_reads_are_conditional_on_last_modified(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    shard = root / "s-0.tar"
    shard.write_bytes(b"a" * 5000)
    os.utime(shard, (1_700_000_000, 1_700_000_000))
    with serving(LastModifiedHandler, root) as (url, handler):
        handler.seen_ius = []
        source = HttpSource(f"{url}/s-{{0..0}}.tar", retry=FAST)
        manifest = source.resolve()
        shard.write_bytes(b"b" * 5000)  # same size, rewritten later
        with pytest.raises(SourceError, match="changed since the dataset was resolved"):
            LocalCache(tmp_path / "cache").stage(source, manifest, workers=2, part_size=MB)
        assert handler.seen_ius


def test_a_shard_that_grew_since_resolve_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s-0.tar").write_bytes(b"a" * 5000)
    with serving(PlainHandler, tmp_path) as (url, _h):
        source = HttpSource(f"{url}/s-{{0..0}}.tar", retry=FAST)
        manifest = source.resolve()
        with open(tmp_path / "s-0.tar", "ab") as f:
            f.write(b"tail")
        with pytest.raises(SourceError, match="5004 bytes, 5000 listed"):
            LocalCache(tmp_path / "cache").stage(source, manifest, workers=2, part_size=MB)

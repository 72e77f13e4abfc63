"""Staging from a real S3 endpoint (moto over HTTP) behind a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import (
    IntegrityError,
    ObjectNotFound,
    SourceError,
    TransientError,
    UnsafePathError,
)
from mlstage.retry import RetryPolicy
from mlstage.sources.s3 import S3Source
from mlstage.testing.faults import Fault, FaultProxy, fault_proxy
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=8, base_seconds=0.005, max_seconds=0.05)
MB = 1024 * 1024


@pytest.fixture(scope="module")
def proxy(s3_endpoint: S3Endpoint) -> Iterator[FaultProxy]:
    with fault_proxy(s3_endpoint.url) as p:
        yield p


@pytest.fixture
def faulty(proxy: FaultProxy, s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """The proxy, reset, with AWS_ENDPOINT_URL pointing at it."""
    proxy.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return proxy


def _upload(s3: S3Endpoint, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = s3.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{rel}", Body=data)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def _dataset() -> dict[str, bytes]:
    files = {f"small/{i:03d}.bin": os.urandom(2000 + i) for i in range(30)}
    files["big/blob.bin"] = os.urandom(3 * MB + 123)
    files["empty.txt"] = b""
    return files


def test_stage_survives_throttling_errors_resets_and_cut_bodies(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    files = _dataset()
    _upload(s3_env, bucket, "ds/", files)
    faulty.configure(
        faults=[
            # object GETs only ("/ds/"): the listing's faults have their own test below
            Fault("slowdown", key="/ds/", times=4),
            Fault("error500", key="/ds/", times=3),
            Fault("reset", key="/ds/", times=2),
            Fault("truncate", key="small/", times=3),
            Fault("truncate", key="big/", times=2),
        ]
    )
    source = S3Source(bucket, "ds", retry=FAST_RETRY)
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(
        source, manifest, workers=8, part_size=MB, retry=FAST_RETRY
    )
    assert _tree(staged.path) == _digests(files)
    fired = faulty.fired()
    assert fired.get("slowdown") == 4 and fired.get("truncate") == 5 and fired.get("reset") == 2
    # every fault cost one attempt (obstore retries nothing by itself: mlstage's policy does),
    # but one may have hit the one-byte GET that asks the endpoint whether it honours ranges
    assert staged.retries >= 13
    # the big object came as parallel ranged GETs
    assert faulty.count("GET", f"/{bucket}/ds/big/blob.bin") >= 4


def test_listing_survives_throttling_errors_resets_and_cut_pages(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str
) -> None:
    files = {f"{i:04d}.bin": b"x" * i for i in range(1, 1200)}  # two listing pages
    client = s3_env.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"many/{rel}", Body=data)
    kinds = ("slowdown", "error500", "reset", "truncate")
    faulty.configure(faults=[Fault(kind, times=1) for kind in kinds])
    source = S3Source(bucket, "many", retry=FAST_RETRY)
    manifest = source.resolve()  # only listing requests: every fault hits a page
    assert {e.path: e.size for e in manifest.entries} == {k: len(v) for k, v in files.items()}
    assert source.listed == len(files)  # the progress counter restarts with each attempt
    assert all(faulty.fired().get(kind) == 1 for kind in kinds), faulty.fired()
    assert faulty.count("GET", f"/{bucket}") == 2 + len(kinds)  # 2 pages + 4 failed attempts

    faulty.configure(faults=[Fault("slowdown")])  # throttled for good: gives up, naming the URI
    with pytest.raises(SourceError) as failed:
        S3Source(bucket, "many", retry=FAST_RETRY).resolve()
    assert not isinstance(failed.value, TransientError)  # final: nothing above retries it
    assert str(failed.value) == (  # one line: the prefix, the status, S3's code, a hint
        f"s3://{bucket}/many/: listing: HTTP 503 SlowDown (gave up after 8 attempts) "
        "(hint: the endpoint keeps failing; retry later)"
    )


def test_an_https_endpoint_that_speaks_plain_http_is_named(
    s3_env: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.url.replace("http://", "https://"))
    with pytest.raises(
        SourceError, match=rf"s3://{bucket}/p/: cannot reach https://127.*plain http"
    ):
        S3Source(bucket, "p", retry=FAST_RETRY).resolve()


def test_a_listing_resumes_after_the_last_key_it_delivered(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str
) -> None:
    """A page that fails mid-listing is asked for again from where the listing was (S3's
    start-after), not from the first page."""
    files = {f"{i:04d}.bin": b"x" for i in range(1001)}  # two pages
    client = s3_env.client()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda k: client.put_object(Bucket=bucket, Key=f"resume/{k}", Body=b"x"), files
            )
        )
    pages = 0
    source = S3Source(bucket, "resume", retry=FAST_RETRY)
    real = source.store.pages

    def counting(prefix: str, **kw: object):  # type: ignore[no-untyped-def]
        nonlocal pages
        for page in real(prefix, **kw):  # type: ignore[arg-type]
            pages += 1
            if pages == 1:  # the second page's request fails, once
                faulty.configure(faults=[Fault("error500", times=1)])
            yield page

    source.store.pages = counting  # type: ignore[method-assign]
    manifest = source.resolve()
    assert len(manifest) == len(files) and faulty.fired() == {"error500": 1}
    # two pages and the failed attempt: the first page was not asked for again
    assert faulty.count("GET", f"/{bucket}") == 2 + 1


def test_corrupted_bytes_are_never_published(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    files = {"a.bin": os.urandom(5000), "b.bin": os.urandom(5000)}
    _upload(s3_env, bucket, "c/", files)
    faulty.configure(faults=[Fault("corrupt", key="a.bin")])  # every time
    source = S3Source(bucket, "c", retry=FAST_RETRY)
    cache = LocalCache(tmp_path / "cache")
    manifest = source.resolve()
    with pytest.raises(IntegrityError, match="a.bin"):
        cache.stage(source, manifest, workers=2, retry=FAST_RETRY)
    assert cache.lookup(manifest.fingerprint) is None
    assert not list((tmp_path / "cache" / "datasets").iterdir())
    # a corrupted body once is simply fetched again
    faulty.configure(faults=[Fault("corrupt", key="a.bin", times=1)])
    staged = cache.stage(source, manifest, workers=2, retry=FAST_RETRY)
    assert _tree(staged.path) == _digests(files)


def test_served_once_and_cheap_reresolve(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    files = {f"k{i}.bin": os.urandom(100) for i in range(5)}
    _upload(s3_env, bucket, "p/", files)
    source = S3Source(bucket, "p/")
    m1 = source.resolve()
    cache = LocalCache(tmp_path / "cache")
    cache.stage(source, m1)
    before = faulty.counts()
    m2 = source.resolve()
    again = cache.stage(source, m2)
    after = faulty.counts()
    assert m1.fingerprint == m2.fingerprint and again.hit
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert all(k.startswith("GET /") and "list-type" not in k for k in new) or new
    assert not any(k.startswith("GET /" + bucket + "/p/k") for k in new)  # no object GETs
    for i in range(5):
        assert after[f"GET /{bucket}/p/k{i}.bin"] == 1
    # one object changes: the fingerprint changes, only it is fetched
    s3_env.client().put_object(Bucket=bucket, Key="p/k0.bin", Body=b"changed")
    m3 = source.resolve()
    assert m3.fingerprint != m1.fingerprint
    staged = cache.stage(source, m3)
    assert staged.objects_fetched == 1
    assert (staged.path / "k0.bin").read_bytes() == b"changed"


def test_object_replaced_between_resolve_and_fetch_is_refused(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    _upload(s3_env, bucket, "r/", {"x.bin": b"one" * 100})
    source = S3Source(bucket, "r", retry=FAST_RETRY)
    manifest = source.resolve()
    s3_env.client().put_object(Bucket=bucket, Key="r/x.bin", Body=b"two" * 100)
    with pytest.raises((SourceError, IntegrityError), match="x.bin"):
        LocalCache(tmp_path / "cache").stage(source, manifest, retry=FAST_RETRY)


def test_missing_bucket_prefix_and_escaping_keys(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str
) -> None:
    with pytest.raises(ObjectNotFound, match="no-such-bucket"):
        S3Source(f"no-such-bucket-{uuid.uuid4().hex[:8]}", "x").resolve()
    with pytest.raises(ObjectNotFound, match="nothing-here"):
        S3Source(bucket, "nothing-here").resolve()
    _upload(s3_env, bucket, "evil/", {"../../outside.txt": b"x"})
    with pytest.raises(UnsafePathError, match="outside.txt"):
        S3Source(bucket, "evil").resolve()

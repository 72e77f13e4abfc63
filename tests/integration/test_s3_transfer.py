"""Staging from a real S3 endpoint (moto over HTTP) behind a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
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
from mlstage.sources.s3 import S3Source, make_client
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
    source = S3Source(bucket, "ds", client=make_client(), retry=FAST_RETRY)
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(
        source, manifest, workers=8, part_size=MB, retry=FAST_RETRY
    )
    assert _tree(staged.path) == _digests(files)
    fired = faulty.fired()
    assert fired.get("slowdown") == 4 and fired.get("truncate") == 5 and fired.get("reset") == 2
    # every fault but a reset cost one attempt (a reset of a pooled connection is retried at
    # once on a fresh one, uncounted)
    assert staged.retries >= 12
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
    source = S3Source(bucket, "many", client=make_client(), retry=FAST_RETRY)
    manifest = source.resolve()  # only listing requests: every fault hits a page
    assert {e.path: e.size for e in manifest.entries} == {k: len(v) for k, v in files.items()}
    assert source.listed == len(files)  # the progress counter restarts with each attempt
    assert all(faulty.fired().get(kind) == 1 for kind in kinds), faulty.fired()
    assert faulty.count("GET", f"/{bucket}") == 2 + len(kinds)  # 2 pages + 4 failed attempts

    faulty.configure(faults=[Fault("slowdown")])  # throttled for good: gives up, naming the URI
    with pytest.raises(SourceError) as failed:
        S3Source(bucket, "many", client=make_client(), retry=FAST_RETRY).resolve()
    assert not isinstance(failed.value, TransientError)  # final: nothing above retries it
    assert str(failed.value) == (
        f"s3://{bucket}/many/: listing: SlowDown (gave up after 8 attempts) "
        "(hint: the endpoint keeps failing; retry later)"
    )


class _ListingStub:
    """A fast path whose listing answers with canned pages (and never reads)."""

    remembered = False  # learnt from this process's botocore, as FastGets.for_bucket's are
    proven = True

    def __init__(self, *answers: tuple[int, bytes] | Exception) -> None:
        self.answers = list(answers)

    def list_page(self, prefix: str, token: str | None = None) -> tuple[int, bytes]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _redirect(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Region>eu-west-1</Region></Error>".encode()


@pytest.mark.parametrize(
    "answer",
    [(301, _redirect("PermanentRedirect")), (400, _redirect("AuthorizationHeaderMalformed"))],
)
def test_a_bucket_in_another_region_is_listed_and_read_through_boto3(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path, answer: tuple[int, bytes]
) -> None:
    files = {"a.bin": b"a" * 10, "b/c.bin": b"c" * 20}
    _upload(s3_env, bucket, "region/", files)
    source = S3Source(bucket, "region", client=make_client(), retry=FAST_RETRY)
    source._fast_gets = _ListingStub(answer)  # signed for the client's region: refused
    manifest = source.resolve()  # botocore follows the redirect
    assert {e.path for e in manifest.entries} == set(files)
    assert source.listed == len(files)
    assert source._fast is None  # the fast path's region is wrong for this bucket: boto3 reads
    staged = LocalCache(tmp_path / "cache").stage(source, manifest, retry=FAST_RETRY)
    assert _tree(staged.path) == _digests(files)


def test_listing_errors_name_the_cause() -> None:
    import ssl

    from mlstage.sources.s3_get import ConnectFailed

    page = (
        b"<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t1"
        b"</NextContinuationToken><EncodingType>url</EncodingType></ListBucketResult>"
    )
    source = S3Source("b", "p", client=object(), retry=FAST_RETRY)
    source._fast_gets = _ListingStub((200, page))  # the same token, page after page
    with pytest.raises(SourceError, match="the same continuation token twice"):
        source.resolve()
    bad_cert = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
    source._fast_gets = _ListingStub(ConnectFailed(bad_cert))
    with pytest.raises(SourceError, match=r"cannot reach the S3 endpoint \(SSLCert.*self-signed"):
        source.resolve()


def test_corrupted_bytes_are_never_published(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    files = {"a.bin": os.urandom(5000), "b.bin": os.urandom(5000)}
    _upload(s3_env, bucket, "c/", files)
    faulty.configure(faults=[Fault("corrupt", key="a.bin")])  # every time
    source = S3Source(bucket, "c", client=make_client(), retry=FAST_RETRY)
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
    source = S3Source(bucket, "p/", client=make_client())
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
    source = S3Source(bucket, "r", client=make_client(), retry=FAST_RETRY)
    manifest = source.resolve()
    s3_env.client().put_object(Bucket=bucket, Key="r/x.bin", Body=b"two" * 100)
    with pytest.raises((SourceError, IntegrityError), match="x.bin"):
        LocalCache(tmp_path / "cache").stage(source, manifest, retry=FAST_RETRY)


def test_missing_bucket_prefix_and_escaping_keys(
    faulty: FaultProxy, s3_env: S3Endpoint, bucket: str
) -> None:
    with pytest.raises(ObjectNotFound, match="no-such-bucket"):
        S3Source(f"no-such-bucket-{uuid.uuid4().hex[:8]}", "x", client=make_client()).resolve()
    with pytest.raises(ObjectNotFound, match="nothing-here"):
        S3Source(bucket, "nothing-here", client=make_client()).resolve()
    _upload(s3_env, bucket, "evil/", {"../../outside.txt": b"x"})
    with pytest.raises(UnsafePathError, match="outside.txt"):
        S3Source(bucket, "evil", client=make_client()).resolve()
